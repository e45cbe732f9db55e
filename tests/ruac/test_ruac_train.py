"""RUAC head training (``ppd.ruac.train``, ``ppd train-ruac``).

Training runs are tiny (4 steps, 2 images, 1 object each, a pool of 2 scenes): with the
default curriculum fractions (5/20, 7/20) step 0 is phase 1, step 1 phase 2 and steps 2-3
phase 3, so every phase runs. They use the bundled model, as the decoder tests do.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

import ppd
from ppd.cli import main as cli_main
from ppd.ruac import BayesianMaskDecoder, load_head
from ppd.ruac.evaluation import evaluate_heldout
from ppd.ruac.train import EmbeddedScenePool, RuacTrainConfig, RuacTrainer, train_ruac
from ppd.segmenter import Segmenter

TINY = dict(
    steps=4, batch_size=2, objects_per_image=1, rounds=2, pool_size=2, adv_images=0,
    eval_scenes=1, eval_objects=1, checkpoint_every=2, log_every=1, device="cpu", seed=3,
)


def tiny_cfg(**kw) -> RuacTrainConfig:
    return RuacTrainConfig(**{**TINY, **kw})


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One uninterrupted tiny run; returns ``(folder, metrics)``."""
    out = tmp_path_factory.mktemp("ruac_run")
    metrics = train_ruac(tiny_cfg(), out)
    return out, metrics


@pytest.fixture(scope="module")
def bundled():
    return ppd.load_segmenter(device="cpu", cache_size=0)


@pytest.fixture(scope="module")
def trainer_and_batch(bundled):
    cfg = tiny_cfg()
    trainer = RuacTrainer(cfg, bundled.model, torch.device("cpu"))
    pool = EmbeddedScenePool(bundled.model, cfg, torch.device("cpu"))
    batch = pool.sample(2, 2)
    return trainer, batch, trainer.make_prompts(batch)


# ----------------------------------------------------------------------------- run folder
def test_tiny_run_covers_all_phases_and_writes_the_run_folder(run_dir):
    out, metrics = run_dir
    cfg = tiny_cfg()
    assert [cfg.phase(s) for s in range(4)] == [1, 2, 3, 3]
    for name in ("config.yaml", "ruac_head.pt", "last.pt", "metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert yaml.safe_load((out / "config.yaml").read_text()) == yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 4 and [h["phase"] for h in saved["history"]] == [1, 2, 3, 3]
    h1, h2, h3 = saved["history"][0], saved["history"][1], saved["history"][3]
    assert "kl" in h1 and h1["kl"] == 0.0 and h2["kl"] > 0  # KL switches on in phase 2
    assert "cal" not in h2 and all(np.isfinite(h3[k]) for k in ("cal", "seg_adv", "kl_adv", "grad_norm_attackers"))
    assert set(saved["s_per_step"]) == {"phase1", "phase2", "phase3"}
    for method in ("base", "ruac", "ruac_mc"):
        r = metrics["final"][method]
        assert r["objects"] == 1 and 0 <= r["pavpu"] <= 1 and 0 <= r["ece"] <= 1
    # the base decoder and the head's mean mask agree closely after 4 small steps
    assert abs(metrics["final"]["base"]["iou"] - metrics["final"]["ruac"]["iou"]) < 0.2


def test_held_out_metrics_are_those_of_the_saved_head(run_dir, bundled):
    """metrics.json's final numbers come from the head in ruac_head.pt: evaluating the
    loaded head again on the held-out scenes gives exactly the same numbers."""
    out, metrics = run_dir
    head = load_head(out, bundled.model.sam_mask_decoder)
    again = evaluate_heldout(bundled, head, tiny_cfg())
    assert set(again) == set(metrics["final"]) == {"base", "ruac", "ruac_mc"}
    for method, res in again.items():
        want = metrics["final"][method]
        assert set(res) == set(want), method
        assert all(res[k] == want[k] or (math.isnan(res[k]) and math.isnan(want[k])) for k in res), method


def test_head_checkpoint_round_trips_through_load_segmenter(run_dir, bundled):
    out, _ = run_dir
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    head = BayesianMaskDecoder(bundled.model.sam_mask_decoder)
    fresh = head.head_state_dict()
    head.load_state_dict(state["head"], strict=False)
    assert any(not torch.equal(fresh[k], v) for k, v in head.head_state_dict().items())  # it trained
    mine = Segmenter(bundled.model, "mine", device="cpu", ruac_head=head)
    loaded = ppd.load_segmenter(device="cpu", decoder="ruac", ruac_checkpoint=out)
    assert loaded.ruac_head.meta["steps"] == 4 and loaded.ruac_head.meta["aue"] is True
    scene = ppd.data.scenes.make_scene(5)
    coords = np.array([[[60.0, 70.0], [120.0, 40.0]], [[30.0, 200.0], [0.0, 0.0]]])
    labels = np.array([[1, 0], [1, -1]])
    for a, b in ((mine, loaded),):
        pa, pb = a.predict(scene.image, coords, labels), b.predict(scene.image, coords, labels)
        np.testing.assert_array_equal(pa.masks, pb.masks)
        np.testing.assert_array_equal(pa.logits, pb.logits)
        np.testing.assert_array_equal(pa.uncertainty, pb.uncertainty)


def test_resume_gives_the_uninterrupted_result(run_dir, tmp_path):
    out_a, metrics_a = run_dir
    out_b = tmp_path / "b"

    def stop_at_2(what, i, n, stats):
        if what == "train" and i == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_ruac(tiny_cfg(), out_b, progress=stop_at_2)
    assert torch.load(out_b / "last.pt", weights_only=False)["step"] == 2
    metrics_b = train_ruac(tiny_cfg(), out_b, resume=True)
    a = torch.load(out_a / "last.pt", weights_only=False)
    b = torch.load(out_b / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    # Same draws and same updates, but the style attacker's graph ops are not bit-exact
    # from run to run on CPU (about 1 run in 5 differs in style.norm.bias; cause not yet
    # found), so compare at 1%: one missed or repeated step moves these weights by ~25%.
    for part in ("head", "style", "deform"):
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], rtol=1e-2, atol=1e-7), f"{part}.{k}: {(a[part][k] - b[part][k]).abs().max()} {a[part][k].abs().max()}"
    ha = torch.load(out_a / "ruac_head.pt", weights_only=True)["state"]
    hb = torch.load(out_b / "ruac_head.pt", weights_only=True)["state"]
    assert all(torch.allclose(ha[k], hb[k], rtol=1e-2, atol=1e-7) for k in ha)
    for key, value in metrics_a["final"]["ruac"].items():
        assert metrics_b["final"]["ruac"][key] == pytest.approx(value, rel=1e-2, abs=1e-4), key
    assert [h["total"] for h in metrics_b["history"]] == pytest.approx([h["total"] for h in metrics_a["history"]], rel=1e-2)


def test_resume_refuses_another_config_or_a_missing_checkpoint(run_dir, tmp_path):
    out, _ = run_dir
    with pytest.raises(ValueError, match="steps: run folder 4 vs now 5"):
        train_ruac(tiny_cfg(steps=5), out, resume=True)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train_ruac(tiny_cfg(), tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        train_ruac(tiny_cfg(device="gpu0"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing written


def test_config_validation():
    with pytest.raises(ValueError, match="prompt_mode"):
        tiny_cfg(prompt_mode="five-clicks")
    with pytest.raises(ValueError, match="kl_start"):
        tiny_cfg(kl_start=0.8, adv_start=0.5)
    with pytest.raises(ValueError, match="unknown head field"):
        tiny_cfg(head={"kappa": 2})
    w = tiny_cfg(aue=False).weights(3)
    assert w["adv"] == w["cal"] == 0 and w["seg"] == 1.0 and w["kl"] > 0


# ----------------------------------------------------------------------------- gradients
def test_attackers_get_reversed_gradient_only_in_the_adversarial_phase(trainer_and_batch):
    trainer, batch, rounds = trainer_and_batch
    params = trainer.attacker_parameters()
    model_params = list(trainer.model.parameters())

    def grads(step):
        gen_state = trainer.gen.get_state()
        trainer.opt.zero_grad(set_to_none=True)
        trainer.losses(batch, rounds, step)["total"].backward()
        trainer.gen.set_state(gen_state)
        return [None if p.grad is None else p.grad.clone() for p in params]

    assert all(g is None for g in grads(0))  # phase 1: the attackers are not used
    # phase 1 scores the analytic mean: the Weibull-shape networks get no gradient yet
    _, shape_params = trainer.head_parameter_groups()
    assert all(p.grad is None or not p.grad.any() for p in shape_params)
    g = grads(3)
    assert trainer.cfg.phase(3) == 3
    assert trainer.style.mlp[-1].weight.grad.abs().sum() > 0
    assert trainer.deform.offset.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model_params)  # SAM2 stays frozen
    assert all(p.grad is not None for p in trainer.head.head_parameters())
    # without the gradient reversal layers the attackers' gradient flips sign
    trainer.style.grl_scale = trainer.deform.grl_scale = None
    try:
        g_plain = grads(3)
    finally:
        trainer.style.grl_scale = trainer.deform.grl_scale = 1.0
    for a, b in zip(g, g_plain):
        if a is not None:
            torch.testing.assert_close(a, -b, rtol=1e-4, atol=1e-7)


def test_calibration_gradient_follows_the_stop_gradient_rules(trainer_and_batch):
    trainer, batch, rounds = trainer_and_batch
    res = trainer.adversarial_losses(batch, rounds[-1], with_kl=True, keep_outputs=True)
    out, y = res["out"], res["target"]
    cal = res["cal"]
    g_l, g_u, g_s = torch.autograd.grad(
        cal, [out.logits, out.uncertainty, out.sampled_entropy], retain_graph=True, allow_unused=True
    )
    # u_s (entropy of the sample) is behind a stop-gradient: no gradient at all
    assert g_s is None or not g_s.any()
    n = y.numel()
    with torch.no_grad():
        p, us, ua = torch.sigmoid(out.logits[:, 0]), out.sampled_entropy[:, 0], out.uncertainty[:, 0]
        e = (p - y).abs()
        # through e only (L1): d/dl [e exp(-u_s) + (1 - e) exp(u_s)]
        want_l = (torch.exp(-us) - torch.exp(us)) * torch.sign(p - y) * p * (1 - p) / n
        # through u_a only (L2), with e detached
        want_u = (-e * torch.exp(-ua) + (1 - e) * torch.exp(ua)) / n
    torch.testing.assert_close(g_l[:, 0], want_l, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(g_u[:, 0], want_u, rtol=1e-4, atol=1e-9)
    # the head's gradient of L_cal is exactly these two channels
    hp = trainer.head.head_parameters()
    direct = torch.autograd.grad(cal, hp, retain_graph=True, allow_unused=True)
    via = torch.autograd.grad([out.logits, out.uncertainty], hp, grad_outputs=[g_l, g_u], retain_graph=True, allow_unused=True)
    for a, b in zip(direct, via):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)
    # and L_cal reaches the attackers too (through e), reversed by the GRL
    ga = torch.autograd.grad(cal, [trainer.style.mlp[-1].weight, trainer.deform.offset.weight])
    assert all(g.abs().sum() > 0 for g in ga)


# ----------------------------------------------------------------------------- CLI
def test_cli_help_and_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["train-ruac", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--no-aue", "--resume", "--config", "--out", "--device", "--seed", "--steps", "--lr-head"):
        assert flag in text


def test_cli_resume_with_a_different_config_is_a_clear_error(run_dir, capsys):
    out, _ = run_dir
    assert cli_main(["train-ruac", "--out", str(out), "--resume", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml differs" in err and "steps" in err
