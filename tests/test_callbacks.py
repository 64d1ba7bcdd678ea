"""Callbacks: what a sweep tells them, in which order, and the TensorBoard writer."""

import os
import types
import warnings

import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP

import jaxsweep
from jaxsweep import _driver
from jaxsweep.callbacks import Callback, Lane, TensorBoard

# two stages of three values, two seeds, two validations per stage
SWEEP = dict(SMALL, stages=2, points_per_stage=3, seeds=2, lr_range=(1e-3, 3e-2))


def sweep(data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        return jaxsweep.run(lambda: TinyMLP(), data, **{**SWEEP, **kwargs})


class Recording(Callback):
    """Every call, in order, with copies of what it was given."""

    def __init__(self):
        self.calls = []

    def on_sweep_start(self, info):
        self.calls.append(("sweep_start", info))

    def on_stage_start(self, stage, values):
        self.calls.append(("stage_start", stage, values))

    def on_validation(self, event):
        self.calls.append(("validation", event))

    def on_stage_end(self, stage, end):
        self.calls.append(("stage_end", stage, end))

    def on_sweep_end(self, result):
        self.calls.append(("sweep_end", result))

    def close(self):
        self.calls.append(("close",))

    def kinds(self):
        return [call[0] for call in self.calls]


@pytest.fixture(scope="module")
def recorded(split_blobs):
    recording = Recording()
    result = sweep(split_blobs, callbacks=[recording])
    return recording, result


def test_callbacks_are_called_in_the_order_of_the_sweep(recorded):
    recording, result = recorded
    validations = len(result.evaluations[0].steps)
    stage = ["stage_start", *["validation"] * validations, "stage_end"]
    expected = ["sweep_start", *stage * len(result.stages), "sweep_end", "close"]
    assert recording.kinds() == expected
    assert recording.calls[-2][1] is result
    info = recording.calls[0][1]
    assert info.resumed is None and not info.finished
    assert (info.hyperparam, info.seeds, info.stages) == ("learning_rate", 2, 2)
    assert info.validation_steps == result.evaluations[0].steps


def test_every_validation_of_every_lane_equals_the_result(recorded):
    recording, result = recorded
    starts = [c for c in recording.calls if c[0] == "stage_start"]
    assert [c[2] for c in starts] == [s.values for s in result.stages]
    events = [c[1] for c in recording.calls if c[0] == "validation"]
    by_stage = {}
    for event in events:
        by_stage.setdefault(event.stage, []).append(event)
    assert sorted(by_stage) == [s.index for s in result.stages]
    for stage, stage_events in by_stage.items():
        values = result.stages[stage].values
        assert [e.segment for e in stage_events] == list(range(len(stage_events)))
        for event in stage_events:
            assert event.lanes == tuple(Lane(v, s) for v in values for s in range(2))
            assert isinstance(event.val_loss, np.ndarray) and event.val_loss.shape == (6,)
        for evaluation in (e for e in result.evaluations if e.stage == stage):
            assert tuple(e.step for e in stage_events) == evaluation.steps
            for seed in range(2):
                lane = event.lanes.index(Lane(evaluation.value, seed))
                seen = [float(e.val_loss[lane]) for e in stage_events]
                assert seen == list(evaluation.seed_val_loss[seed])
            rows = [event.lanes.index(Lane(evaluation.value, s)) for s in range(2)]
            train = [float(np.mean(e.train_loss[rows])) for e in stage_events]
            np.testing.assert_allclose(train, evaluation.train_loss, rtol=1e-6)


def test_stage_end_holds_the_stage_evaluations_and_the_best_so_far(recorded):
    recording, result = recorded
    ends = [c for c in recording.calls if c[0] == "stage_end"]
    for (_, stage, end), record in zip(ends, result.stages, strict=True):
        assert stage == end.stage == record.index
        assert end.evaluations == tuple(e for e in result.evaluations if e.stage == stage)
        assert (end.best_value, end.best_score) == (record.best_value, record.best_score)
    assert ends[-1][2].best_value == result.best_value


class StopAfter(Callback):
    def __init__(self, count, error):
        self.count, self.error, self.closed = count, error, False

    def on_validation(self, event):
        self.count -= 1
        if self.count == 0:
            raise self.error("from a callback")

    def close(self):
        self.closed = True


def test_ctrl_c_in_a_callback_propagates_and_the_checkpoint_resumes(split_blobs, tmp_path):
    """Ctrl-C (as any error) in a callback reaches the caller; the save of the validation it
    was told of is complete, and the rerun continues from there."""
    directory, error = tmp_path / "ckpt", KeyboardInterrupt
    stopper = StopAfter(1, error)
    arguments = dict(stages=1, checkpoint_dir=directory, checkpoint_every_seconds=0.0)
    with pytest.raises(error, match="from a callback"):
        sweep(split_blobs, callbacks=[stopper], **arguments)
    assert stopper.closed
    recording = Recording()
    resumed = sweep(split_blobs, callbacks=[recording], **arguments)
    assert resumed.environment["checkpoint"]["resumed_from"] == {"stage": 0, "epoch": 1}
    info = recording.calls[0][1]
    assert info.resumed is not None and (info.resumed.stage, info.resumed.segment) == (0, 1)
    assert info.resumed.steps == resumed.evaluations[0].steps[0]
    assert [c[1].segment for c in recording.calls if c[0] == "validation"] == [1]
    # a finished sweep's stored result: told, though nothing trains
    again = Recording()
    stored = sweep(split_blobs, callbacks=[again], **arguments)
    assert again.kinds() == ["sweep_start", "sweep_end", "close"]
    assert again.calls[0][1].finished and again.calls[1][1] is stored


def test_callbacks_run_in_the_writing_process_unless_they_ask_for_all(split_blobs):
    mine, everywhere = Callback(), Callback()
    everywhere.all_processes = True

    def fake_setup(writer):
        config = types.SimpleNamespace(seeds=1)
        budget = types.SimpleNamespace(validation_steps=lambda: (1,))
        hosts = types.SimpleNamespace(writer=writer)
        return types.SimpleNamespace(
            config=config, budget=budget, hosts=hosts, callbacks=(mine, everywhere)
        )

    assert _driver._Callbacks(fake_setup(True), None, None).items == (mine, everywhere)
    assert _driver._Callbacks(fake_setup(False), None, None).items == (everywhere,)


@pytest.mark.parametrize(
    "callbacks, match",
    [
        ("progress", "a list of callbacks"),
        (Recording(), "a list of callbacks"),
        ([object()], "none of the methods"),
        ([Recording], "is a class"),
    ],
)
def test_callbacks_argument_is_checked(blobs, callbacks, match):
    with pytest.raises(TypeError, match=match):
        jaxsweep.run(lambda: TinyMLP(), blobs, progress=False, callbacks=callbacks)


# ----------------------------------------------------------------------------- TensorBoard


def loss_with_accuracy(logits, labels):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return {"loss": loss, "accuracy": (logits.argmax(-1) == labels).mean()}


@pytest.fixture(scope="module")
def tensorboard_sweep(split_blobs, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tensorboard")
    result = sweep(split_blobs, loss=loss_with_accuracy, callbacks=[TensorBoard(logdir)])
    return logdir, result


def read_run(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path))
    accumulator.Reload()
    return accumulator


def test_tensorboard_writes_one_run_per_lane_with_the_result_losses(tensorboard_sweep):
    logdir, result = tensorboard_sweep
    runs = {
        os.path.relpath(root, logdir)
        for root, _, files in os.walk(logdir)
        if any(f.startswith("events.out.tfevents") for f in files)
    }
    expected = {f"learning_rate={e.value:.2e}/seed={s}" for e in result.evaluations for s in (0, 1)}
    assert runs == expected
    for evaluation in result.evaluations:
        accuracy = []
        for seed in (0, 1):
            run = read_run(logdir / f"learning_rate={evaluation.value:.2e}" / f"seed={seed}")
            val = run.Scalars("val/loss")
            assert [e.step for e in val] == list(evaluation.steps)
            np.testing.assert_allclose(
                [e.value for e in val], evaluation.seed_val_loss[seed], rtol=1e-6
            )
            assert [e.step for e in run.Scalars("train/loss")] == list(evaluation.steps)
            accuracy.append([e.value for e in run.Scalars("val/accuracy")])
        np.testing.assert_allclose(
            np.mean(accuracy, axis=0), evaluation.val_aux["accuracy"], rtol=1e-6
        )


def test_tensorboard_records_the_swept_value_as_an_hparam(tensorboard_sweep):
    from tensorboard.plugins.hparams import plugin_data_pb2

    logdir, result = tensorboard_sweep
    for evaluation in result.evaluations:
        for seed in (0, 1):
            run = read_run(logdir / f"learning_rate={evaluation.value:.2e}" / f"seed={seed}")
            content = run.PluginTagToContent("hparams")
            experiment = plugin_data_pb2.HParamsPluginData.FromString(
                content["_hparams_/experiment"]
            ).experiment
            assert "learning_rate" in {h.name for h in experiment.hparam_infos}
            assert [m.name.tag for m in experiment.metric_infos] == ["hparam/val_loss"]
            session = plugin_data_pb2.HParamsPluginData.FromString(
                content["_hparams_/session_start_info"]
            ).session_start_info
            hparams = {k: v.number_value for k, v in session.hparams.items()}
            assert hparams == {"learning_rate": evaluation.value, "stage": evaluation.stage}
            assert session.group_name == f"learning_rate={evaluation.value:.2e}"  # both seeds
            (final,) = run.Scalars("hparam/val_loss")
            assert final.step == evaluation.steps[-1]
            np.testing.assert_allclose(final.value, evaluation.seed_scores[seed], rtol=1e-6)


def test_tensorboard_run_names_tell_close_values_apart(tmp_path):
    board = TensorBoard(tmp_path)
    names = [board.run_name(Lane(v, 0)) for v in (1.0012e-3, 1.0014e-3, 1.0012e-3, 0.5)]
    assert names[0] == names[2] and len(set(names)) == 3
    assert names[3] == "learning_rate=5.00e-01/seed=0"


def test_tensorboard_without_its_library_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"jaxsweep\[tensorboard\]"):
        TensorBoard(tmp_path)
