"""With tensorboard installed, a run writes an event file of its epoch scalars."""

import pytest


def test_a_run_writes_its_epoch_scalars_as_tensorboard_events(cli, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (ticketkit[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = "prune --method edgepopup --arch mlp --dataset digits --k 0.5 --epochs 2"
    result = cli(*args.split(), "--out", tmp_path)
    assert result.code == 0, result.err
    from ticketkit.runs import tensorboard

    tensorboard.close()
    (events,) = tmp_path.glob("*/tensorboard/events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"prune/train_loss", "prune/train_acc1", "prune/lr", "final/test_acc1"} <= set(tags)
    assert [e.step for e in acc.Scalars("prune/train_loss")] == [1, 2]
    # the masks' scalars: each layer's density (k) and how much of the mask changed
    assert {"prune/density/1", "prune/density/3", "prune/density/5"} <= set(tags)
    assert {round(e.value, 3) for e in acc.Scalars("prune/density/3")} == {0.5}
    assert 0 < acc.Scalars("prune/mask_changed")[0].value < 1
