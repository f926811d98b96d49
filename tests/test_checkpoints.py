"""Crash-safe checkpoints: atomic writes that a SIGKILL cannot corrupt, deferred removal, a best model that is never
replaced by worse weights (also across a resume), and per-iteration loss terms for the loggers."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint

from monai_moe_reg.engines import BestModelSaver, SafeDiskSaver, atomic_save, loss_terms


def test_sigkill_during_atomic_saves_never_leaves_a_corrupt_file(tmp_path):
    path = tmp_path / "model.pt"
    script = (
        "import sys, torch\n"
        "from monai_moe_reg.engines.checkpoints import atomic_save\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    atomic_save({'step': i, 'w': torch.full((4_000_000,), float(i))}, sys.argv[1])\n"
    )
    for delay in (0.03, 0.11, 0.2, 0.37, 0.55):
        before = path.stat().st_mtime_ns if path.exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)])
        start = time.time()
        while (not path.exists() or path.stat().st_mtime_ns == before) and time.time() - start < 120:
            time.sleep(0.01)  # the first save of this process is complete: now kill it somewhere in the next ones
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():  # either the previous complete file or the new one, never a torn one
            state = torch.load(path, weights_only=True)
            assert float(state["w"][0]) == float(state["w"][-1]) == state["step"]
    assert path.exists()


def test_safe_disk_saver_removes_the_old_checkpoint_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    engine = Engine(lambda e, b: None)
    net = torch.nn.Linear(2, 2)
    handler = Checkpoint({"network": net}, SafeDiskSaver(tmp_path), n_saved=1,
                         global_step_transform=lambda e, _: e.state.epoch)
    engine.state.epoch = 1
    handler(engine)
    assert [p.name for p in tmp_path.glob("*.pt")] == ["network_1.pt"]

    import monai_moe_reg.engines.checkpoints as ck

    def killed(*_a, **_k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ck.torch, "save", killed)
    engine.state.epoch = 2
    with pytest.raises(KeyboardInterrupt):
        handler(engine)
    assert [p.name for p in tmp_path.iterdir()] == ["network_1.pt"]  # still there, no temporary file left
    monkeypatch.undo()
    engine.state.epoch = 3
    handler(engine)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["network_3.pt"]


def _evaluator_with(value: float, epoch: int) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.key_metric_name = "val_dice"
    engine.state.metrics = {"val_dice": value}
    engine.state.epoch = epoch
    return engine


def test_best_model_is_never_replaced_by_worse_weights_also_after_a_resume(tmp_path):
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(str(tmp_path), net)
    saver.attach(Engine(lambda e, b: None))
    for epoch, (value, weight) in enumerate([(0.5, 1.0), (0.7, 2.0), (0.6, 3.0), (math.nan, 4.0)], start=1):
        torch.nn.init.constant_(net.weight, weight)
        saver(_evaluator_with(value, epoch))
    assert float(torch.load(tmp_path / "model.pt")["weight"][0, 0]) == 2.0
    side = json.loads((tmp_path / "model.pt.json").read_text())
    assert {k: side[k] for k in ("metric", "value", "epoch")} == {"metric": "val_dice", "value": 0.7, "epoch": 2}
    assert side["network"]["class"] == "torch.nn.modules.linear.Linear"
    resumed = BestModelSaver(str(tmp_path), net)  # a resumed run reads the best so far
    resumed.attach(Engine(lambda e, b: None))
    torch.nn.init.constant_(net.weight, 5.0)
    resumed(_evaluator_with(0.65, 1))  # e.g. the validation at start of a resumed run
    assert float(torch.load(tmp_path / "model.pt")["weight"][0, 0]) == 2.0
    resumed(_evaluator_with(0.8, 5))
    assert float(torch.load(tmp_path / "model.pt")["weight"][0, 0]) == 5.0


def test_loss_terms_are_scalars_for_the_loggers():
    out = {"image": torch.zeros(1, 2, 4, 4, 4), "pred": torch.zeros(1, 3, 4, 4, 4), "loss": torch.tensor(0.5),
           "sim": 0.25, "reg": 0.1}
    assert loss_terms(out) == {"loss": 0.5, "sim": 0.25, "reg": pytest.approx(0.1)}


def test_resume_without_any_checkpoint_starts_a_new_run(tmp_path, caplog):
    import logging

    from monai_moe_reg.engines.resume import resume_from_latest

    trainer = Engine(lambda e, b: None)
    with caplog.at_level(logging.WARNING, logger="monai_moe_reg.bundles"):
        assert resume_from_latest(trainer, tmp_path, {"trainer": trainer}) is None
    assert "starting a new run" in caplog.text and trainer.state.epoch == 0
    (tmp_path / "checkpoint_checkpoint_epoch=1.pt").write_bytes(b"torn")
    with pytest.raises(ValueError, match="no readable checkpoint"):
        resume_from_latest(trainer, tmp_path, {"trainer": trainer})


def test_temporaries_of_killed_writers_are_removed_at_the_next_save(tmp_path):
    import os

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".model.pt.{dead.pid}.tmp").write_bytes(b"torn by a SIGKILL")
    (tmp_path / f".model.pt.{os.getppid()}.tmp").write_bytes(b"a live writer's")
    atomic_save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".model.pt.{os.getppid()}.tmp", "model.pt"]


def test_network_weights_load_from_a_resumable_checkpoint(tmp_path):
    """A resumable checkpoint (network, optimizer, NumPy RNG state) is a valid --checkpoint / --pretrained source."""
    from monai_moe_reg.weights import load_network_weights
    from monai_moe_reg.engines import RNGState

    net, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    path = tmp_path / "checkpoint_3.pt"
    torch.save({"network": net.state_dict(), "rng": RNGState().state_dict()}, path)
    load_network_weights(other, path)
    assert torch.equal(other.weight, net.weight)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_resume_never_unpickles_code_and_names_a_checkpoint_of_another_network(tmp_path, monkeypatch):
    """A booby-trapped checkpoint_*.pt is refused (weights_only) and its payload never runs; the real state (optimizer,
    trainer, NumPy RNG state) still resumes; a checkpoint of another network is a one-line error, not a traceback."""
    from monai_moe_reg.engines.resume import resume_from_latest
    from monai_moe_reg.engines import RNGState

    monkeypatch.chdir(tmp_path)
    torch.save({"x": _Payload()}, tmp_path / "checkpoint_checkpoint_5.pt")
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    trainer = Engine(lambda e, b: None)
    with pytest.raises(ValueError, match="holds Python objects other than tensors"):
        resume_from_latest(trainer, tmp_path, {"network": net, "optimizer": opt, "trainer": trainer})
    assert not (tmp_path / "PWNED").exists()

    (tmp_path / "checkpoint_checkpoint_5.pt").unlink()
    net.weight.grad = torch.ones_like(net.weight)
    net.bias.grad = torch.ones_like(net.bias)
    opt.step()
    done = Engine(lambda e, b: None)
    done.run([0], max_epochs=2)
    torch.save({"network": net.state_dict(), "optimizer": opt.state_dict(), "trainer": done.state_dict(),
                "rng": RNGState().state_dict()}, tmp_path / "checkpoint_checkpoint_2.pt")
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.Adam(fresh.parameters())
    trainer = Engine(lambda e, b: None)
    assert resume_from_latest(trainer, tmp_path, {"network": fresh, "optimizer": fresh_opt, "trainer": trainer})
    assert torch.equal(fresh.weight, net.weight) and trainer.state.epoch == 2
    with pytest.raises(ValueError, match="does not fit this run's network, optimizer, trainer"):
        wide = torch.nn.Linear(4, 2)
        resume_from_latest(Engine(lambda e, b: None), tmp_path,
                           {"network": wide, "optimizer": torch.optim.Adam(wide.parameters()), "trainer": trainer})


def test_model_pt_only_from_a_trained_network_of_this_architecture(tmp_path):
    """The validation before training (epoch 0) writes nothing, however good; a model.pt of another network is
    moved aside at the start of a new run, not kept as its best; loading refuses weights whose recorded settings
    differ from the network's (a state dict would load into diffeomorphic=True silently)."""
    from monai_moe_reg.weights import load_network_weights
    from monai_moe_reg.networks.nets import SHMoAReg

    from .conftest import tiny_shmoareg_kwargs

    net = SHMoAReg(3, **tiny_shmoareg_kwargs())
    saver = BestModelSaver(str(tmp_path), net)
    saver.attach(Engine(lambda e, b: None))
    saver(_evaluator_with(1.0, 0))  # before any training, e.g. a pair with moving == fixed
    assert not (tmp_path / "model.pt").exists() and saver.best is None
    saver(_evaluator_with(0.8, 1))
    assert (tmp_path / "model.pt").is_file()

    diffeo = SHMoAReg(3, **tiny_shmoareg_kwargs(diffeomorphic=True))
    with pytest.raises(ValueError, match=r"other network settings \(diffeomorphic: False -> True\)"):
        load_network_weights(diffeo, tmp_path / "model.pt")
    load_network_weights(SHMoAReg(3, **tiny_shmoareg_kwargs(check_values=False)), tmp_path / "model.pt")

    other = BestModelSaver(str(tmp_path), diffeo)  # a new run with another architecture
    other.attach(Engine(lambda e, b: None))
    assert not (tmp_path / "model.pt").exists() and (tmp_path / "model.previous-1.pt").is_file()
    assert (tmp_path / "model.previous-1.pt.json").is_file() and other.best is None
