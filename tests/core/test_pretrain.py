"""`ppd pretrain`: schedule, curriculum, prompts, a tiny end-to-end run and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppd.data.scenes import CURRICULUM_DOMAIN, DOMAINS, make_scene
from ppd.models import new_tiny_model
from ppd.pretrain import (
    PretrainConfig,
    ScenePool,
    _initial_prompt,
    instance_loss,
    lr_at,
    parameter_groups,
    pretrain,
    resolve_device,
    simple_share,
    trainable_parameters,
)
from ppd.segmenter import load_segmenter


def tiny_cfg(**kw) -> PretrainConfig:
    base = dict(steps=2, batch_size=2, objects_per_image=1, rounds=2, pool_size=3, eval_every=0,
                eval_scenes=2, checkpoint_every=1, threads=1, warmup_steps=1)
    base.update(kw)
    return PretrainConfig(**base)


class _Interrupt(Exception):
    pass


def test_lr_warms_up_linearly_then_decays_to_the_floor():
    cfg = PretrainConfig(steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(1000, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_curriculum_share_falls_linearly_to_zero():
    assert simple_share(10, PretrainConfig(curriculum_steps=0)) == 0.0
    cfg = PretrainConfig(curriculum_steps=100)
    assert [simple_share(s, cfg) for s in (0, 25, 100, 500)] == [1.0, 0.75, 0.0, 0.0]


def test_simple_generator_is_not_a_benchmark_domain_but_draws_scenes():
    assert CURRICULUM_DOMAIN not in DOMAINS
    scene = make_scene(3, CURRICULUM_DOMAIN)
    assert 1 <= scene.num_objects <= 3 and scene.domain == CURRICULUM_DOMAIN
    np.testing.assert_array_equal(scene.image, make_scene(3, CURRICULUM_DOMAIN).image)


def test_pool_serves_the_simple_share():
    cfg = tiny_cfg(pool_size=6, curriculum_steps=10)
    pool = ScenePool(cfg, np.random.default_rng(0))
    assert len(pool.scenes) == 6 and len(pool.simple) == 2
    simple_images = {s.image.tobytes() for s in pool.simple}

    def from_simple(p, n=40):
        imgs, masks, owner = pool.sample(n, 2, p)
        assert masks.shape[0] == len(owner) and owner.max() == n - 1 and masks.dtype == bool
        # images are rotated/flipped/channel-permuted: compare sorted pixel values
        keys = {np.sort(s.image, axis=None).tobytes() for s in pool.simple}
        return np.mean([np.sort(im, axis=None).tobytes() in keys for im in imgs])

    assert from_simple(1.0) == 1.0
    assert from_simple(0.0) == 0.0
    assert 0.2 < from_simple(0.5) < 0.8
    pool.refresh(simple=True)
    assert len(pool.simple) == 2 and pool.next_simple_seed == 3
    assert len({s.image.tobytes() for s in pool.simple} - simple_images) == 1
    assert not ScenePool(tiny_cfg(), np.random.default_rng(0)).simple  # no curriculum, no pool


def test_instance_labels_follow_the_augmentation_of_their_masks():
    pool = ScenePool(tiny_cfg(pool_size=4), np.random.default_rng(0))
    for _ in range(5):
        imgs, masks, owner, inst = pool.sample(6, 3, labels=True)
        assert inst.shape == imgs.shape[:3] and inst.dtype == np.int16
        for m, o in zip(masks, owner):
            ids = np.unique(inst[o][m])
            assert len(ids) == 1 and ids[0] > 0  # every object row is exactly one instance id
            np.testing.assert_array_equal(inst[o] == ids[0], m)


def test_instance_loss_is_low_for_separable_features_and_high_for_uninformative_ones():
    inst = torch.zeros(1, 64, 64, dtype=torch.int16)
    inst[0, 8:40, 8:40] = 1
    inst[0, 40:60, 30:62] = 2
    onehot = torch.nn.functional.one_hot(inst.long(), 3).permute(0, 3, 1, 2).float()
    feat = torch.nn.functional.adaptive_avg_pool2d(onehot, (16, 16))  # instance indicator features
    good = instance_loss(feat * 10, inst, 0.1)
    rand = instance_loss(torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0)), inst, 0.1)
    assert float(good) < 0.05 < 0.5 < float(rand)
    # a single instance per image gives nothing to discriminate: zero loss, still differentiable
    one = torch.randn(1, 8, 16, 16, requires_grad=True)
    loss = instance_loss(one, torch.zeros(1, 64, 64, dtype=torch.int16), 0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0 and one.grad is not None


def test_parameter_groups_cover_the_image_and_prompt_paths_once():
    model = new_tiny_model()
    groups = parameter_groups(model, decoder_lr_scale=3.0)
    assert [g["lr_scale"] for g in groups] == [1.0, 3.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(trainable_parameters(model))
    decoder = {id(p) for p in model.sam_mask_decoder.parameters()}
    assert decoder <= {id(p) for p in groups[1]["params"]}
    assert id(model.no_mem_embed) in {id(p) for p in groups[0]["params"]}


def test_initial_prompts_are_inside_the_object_or_a_box_around_it():
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:50] = True
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(200):
        pts, labels, multi = _initial_prompt(mask, rng, PretrainConfig())
        assert pts.shape == (len(labels), 2) and pts.dtype == np.float32
        if (labels >= 2).any():
            kinds.add("box")
            assert list(labels) == [2, 3] and not multi
            (x0, y0), (x1, y1) = pts
            assert abs(x0 - 20) < 8 and abs(x1 - 49) < 8 and abs(y0 - 10) < 6 and abs(y1 - 29) < 6
            continue
        kinds.add("single" if len(labels) == 1 else "multi")
        assert multi == (len(labels) == 1)
        x, y = pts.astype(int).T
        assert (mask[y, x] == (labels == 1)).all()  # positives inside, negatives outside
    assert kinds == {"box", "single", "multi"}


def test_unknown_domain_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown domain 'moon'"):
        pretrain(tiny_cfg(domain="moon"), tmp_path)


def test_device_is_resolved_and_bad_devices_are_clear_errors(tmp_path):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pretrain(tiny_cfg(device="gpu0"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing written
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pretrain(tiny_cfg(device="cuda"), tmp_path / "bad")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "a"
    final = pretrain(tiny_cfg(curriculum_steps=2, instance_weight=1.0, decoder_lr_scale=2.0), out)
    return out, final


def test_tiny_run_writes_a_loadable_model_and_metrics(tiny_run):
    out, final = tiny_run
    for name in ("config.json", "last.pt", "model.pt", "metrics.json"):
        assert (out / name).is_file(), name
    assert final["objects"] > 0 and all(0.0 <= final[f"miou@{k}"] <= 1.0 for k in (1, 2, 3))
    seg = load_segmenter(checkpoint=out / "model.pt", device="cpu")
    scene = make_scene(0)
    pred = seg.predict(scene.image, np.array([[100.0, 100.0]]), np.array([1]))
    assert pred.masks.shape == (1, 256, 256)
    meta = torch.load(out / "model.pt", weights_only=False)["meta"]
    assert meta["steps"] == 2 and meta["eval_in_domain"] == final and meta["device"] == str(resolve_device("auto"))
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 2 and state["history"] == [] and len(state["pool"]["simple_seeds"]) == 1


def test_resume_continues_a_killed_run_to_the_same_weights(tiny_run, tmp_path):
    out_a, _ = tiny_run

    def stop_at_1(what, i, n, stats):
        if what == "train" and i == 1:
            raise _Interrupt

    out_b = tmp_path / "b"
    with pytest.raises(_Interrupt):
        pretrain(tiny_cfg(curriculum_steps=2, instance_weight=1.0, decoder_lr_scale=2.0), out_b, progress=stop_at_1)
    assert torch.load(out_b / "last.pt", weights_only=False)["step"] == 1
    pretrain(tiny_cfg(curriculum_steps=2, instance_weight=1.0, decoder_lr_scale=2.0), out_b, resume=True)
    a = torch.load(out_a / "last.pt", weights_only=False)["model"]
    b = torch.load(out_b / "last.pt", weights_only=False)["model"]
    # the resumed run rebuilds its scene pool from the seeds, then replays the saved
    # generator states: same scenes, same clicks, same updates
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
