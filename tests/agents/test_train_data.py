"""Training on a user's data: sources, the held-out split, one-shot references and FM start states."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ppd.agents.train_config import TrainConfig
from ppd.agents.train_data import open_training_data, parse_source
from ppd.bench.data import DataError
from ppd.data.references import ReferencePicker
from ppd.data.scenes import TRAIN_DOMAIN, ProceduralScenes, make_scene
from ppd.data.types import Scene
from ppd.oneshot import feature_matching

SIZES = ((96, 128), (128, 96), (112, 112), (128, 128), (80, 120), (100, 100))


def write_folder(root, sizes=SIZES, empty=()):
    """``root/images`` + ``root/masks``: procedural scenes cut to mixed sizes with 8-bit
    instance-id masks (several objects each); the images in ``empty`` get an empty mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate(sizes):
        scene = make_scene(712 + i, "train", size=128)  # every cut keeps >= 2 objects of >= 200 px
        ids = np.zeros((128, 128), np.uint8)
        if i not in empty:
            for k, m in enumerate(scene.masks):
                ids[m] = k + 1
        Image.fromarray(scene.image[:h, :w]).save(root / "images" / f"im{i}.png")
        Image.fromarray(ids[:h, :w]).save(root / "masks" / f"im{i}.png")
    return root


def cfg_for(**kw) -> TrainConfig:
    return TrainConfig(**{"eval_scenes": 2, "scenes": 3, **kw})


def image_keys(scenes) -> set[bytes]:
    return {s.image.tobytes() for s in scenes}


# ----------------------------------------------------------------------------- sources and split
def test_parse_source_names_bare_and_named_sources(tmp_path):
    folder = write_folder(tmp_path / "my data")
    assert (parse_source(str(folder)).name, parse_source(str(folder)).kind) == ("my_data", "folder")
    assert parse_source(f"mine={folder}").name == "mine"
    assert (parse_source("procedural:texture").name, parse_source("procedural:texture").kind) == ("texture", "procedural")
    assert parse_source("x/val.json").name == "val" and parse_source("x/val.json").kind == "coco"


def test_default_data_is_the_procedural_training_domain():
    data = open_training_data(cfg_for(seed=3))
    assert len(data.train) == 3 and len(data.eval) == 2
    assert image_keys(data.train) == image_keys(ProceduralScenes(TRAIN_DOMAIN, 3, seed=3_500_000))
    from ppd.agents.evaluation import EVAL_SEED

    assert image_keys(data.eval) == image_keys(ProceduralScenes(TRAIN_DOMAIN, 2, seed=EVAL_SEED))


def test_folder_split_holds_images_out_by_seed(tmp_path):
    folder = write_folder(tmp_path / "mine", empty=(5,))
    data = open_training_data(cfg_for(data=[str(folder)], seed=0))
    # one image has no object: 5 usable, 2 held out, 3 trained on, never the same image
    assert (len(data.train), len(data.eval)) == (3, 2)
    assert not image_keys(data.train) & image_keys(data.eval)
    assert all(s.num_objects >= 1 and s.domain == "mine" for s in [*data.train, *data.eval])
    assert {s.image.shape[:2] for s in data.train} | {s.image.shape[:2] for s in data.eval} <= set(SIZES)
    again = open_training_data(cfg_for(data=[str(folder)], seed=0))
    assert image_keys(again.eval) == image_keys(data.eval)  # by the seed
    splits = {frozenset(image_keys(open_training_data(cfg_for(data=[str(folder)], seed=s)).eval)) for s in range(6)}
    assert len(splits) > 1
    assert "3 images, 2 held out" in data.description


def test_min_area_and_max_objects_select_the_objects(tmp_path):
    folder = write_folder(tmp_path / "mine")
    every = open_training_data(cfg_for(data=[str(folder)]))
    few = open_training_data(cfg_for(data=[str(folder)], max_objects=1, min_area=200))
    for a, b in zip(every.train, few.train):
        areas = a.masks.reshape(len(a.masks), -1).sum(1)
        assert b.num_objects == 1 and b.masks[0].sum() == areas.max() >= 200


def test_mixed_sources_and_eval_data(tmp_path):
    a, b = write_folder(tmp_path / "a"), write_folder(tmp_path / "b", sizes=SIZES[:3])
    data = open_training_data(cfg_for(data=[str(a), "procedural:texture"], eval_scenes=4))
    assert len(data.train) == (6 - 2) + 3 and len(data.eval) == 4
    assert {s.domain for s in data.train} == {"a", "texture"}
    given = open_training_data(cfg_for(data=[str(a)], eval_data=[str(b)], eval_scenes=2))
    assert len(given.train) == 6 and len(given.eval) == 2
    every_b = open_training_data(cfg_for(data=[str(b)], eval_data=["procedural:train"])).train
    assert len(every_b) == 3 and image_keys(given.eval) < image_keys(every_b)  # a sample of --eval-data


def test_bad_sources_are_refused_with_the_reason(tmp_path):
    one = write_folder(tmp_path / "one", sizes=SIZES[:1])
    with pytest.raises(DataError, match="at least 2"):
        open_training_data(cfg_for(data=[str(one)]))
    two = write_folder(tmp_path / "two", sizes=SIZES[:2])
    with pytest.raises(DataError, match="must not be trained on"):
        open_training_data(cfg_for(data=[str(two)], eval_data=[str(two)]))
    with pytest.raises(DataError, match="does not exist"):
        open_training_data(cfg_for(data=[str(tmp_path / "nowhere")]))
    with pytest.raises(DataError, match="unknown procedural domain"):
        open_training_data(cfg_for(data=["procedural:mars"]))
    empty = write_folder(tmp_path / "empty", sizes=SIZES[:2], empty=(0, 1))
    with pytest.raises(DataError, match="no image has an object"):
        open_training_data(cfg_for(data=[str(empty)]))


def test_cli_data_error_is_one_line(tmp_path):
    two = write_folder(tmp_path / "two", sizes=SIZES[:2])
    cmd = [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())", "train", "--data", str(two),
           "--eval-data", str(two), "--out", str(tmp_path / "run"), "--rounds", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "must not be trained on" in proc.stderr


# ----------------------------------------------------------------------------- references
def test_procedural_reference_is_an_instance_of_the_objects_class():
    from ppd.data.oneshot_pairs import object_classes

    scenes = ProceduralScenes(TRAIN_DOMAIN, 3, seed=40)
    picker = ReferencePicker(lambda i: scenes[i], len(scenes), seed=1)
    scene = scenes[0]
    classes = object_classes(scene, scene.seed, TRAIN_DOMAIN)
    for obj in range(scene.num_objects):
        image, mask = picker(0, obj)
        assert image.shape == scene.image.shape and mask.dtype == bool and mask.sum() > 0
        colour = np.median(image[mask].astype(np.float32) / 255.0, axis=0)
        assert np.linalg.norm(colour - np.array(classes[obj].colour)) < 0.2  # the class's appearance
        again = picker(0, obj)
        assert np.array_equal(again[1], mask) and np.array_equal(again[0], image)  # by the seed
    assert not np.array_equal(picker(0, 0)[0], ReferencePicker(lambda i: scenes[i], 3, seed=2)(0, 0)[0])
    with pytest.raises(IndexError):
        picker(0, scene.num_objects)


def test_dataset_references_follow_categories_or_other_images():
    def scene(fill, cats, n=2):
        img = np.full((32, 32, 3), fill, np.uint8)
        masks = np.zeros((n, 32, 32), bool)
        for k in range(n):
            masks[k, 2 + 12 * k: 10 + 12 * k, 2:10 + 4 * k] = True
        return Scene(img, masks, domain="d", meta={} if cats is None else {"category_ids": cats})

    coco = [scene(10, [1, 2]), scene(20, [2, 3]), scene(30, [1, 1])]
    pick = ReferencePicker(lambda i: coco[i], 3, seed=0)
    assert pick(0, 1)[0][0, 0, 0] == 20  # category 2: only in image 1
    assert pick(0, 0)[0][0, 0, 0] == 30  # category 1: image 2
    assert pick(1, 1) is None  # category 3 appears once
    folder = [scene(10, None), scene(20, None, n=1)]
    pick = ReferencePicker(lambda i: folder[i], 2, seed=0)
    image, mask = pick(0, 0)
    assert image[0, 0, 0] == 20 and np.array_equal(mask, folder[1].masks[0])  # the other image's largest
    assert ReferencePicker(lambda i: folder[i], 1)(0, 0) is None


def test_class_folder_references_are_other_images_of_the_class(tmp_path):
    """``ppd train --data ROOT`` on a folder per class: each object's one-shot reference
    is the object of another image of its class folder."""
    for cls, fill in (("cat", 60), ("dog", 160)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            img = np.full((40, 48 + 8 * i, 3), fill + i, np.uint8)
            mask = np.zeros(img.shape[:2], np.uint8)
            mask[4:20, 4:20 + 4 * i] = 255
            Image.fromarray(img).save(tmp_path / cls / f"{i}.bmp")
            Image.fromarray(mask).save(tmp_path / cls / f"{i}.png")
    from ppd.bench.data import DataSpec, open_domain

    dom = open_domain(DataSpec("pets", str(tmp_path)))
    pick = ReferencePicker(dom.scene, len(dom), seed=0)
    for k, name in enumerate(dom.ids):
        image, mask = pick(k, 0)
        cls, i = name.split("/")
        assert image[0, 0, 0] // 100 == (60 if cls == "cat" else 160) // 100  # its class
        assert image[0, 0, 0] != dom.scene(k).image[0, 0, 0]  # another image
        assert mask.sum() == 16 * (16 + 4 * (int(image[0, 0, 0]) % 10))  # that image's object


# ----------------------------------------------------------------------------- FM start states
def test_fm_starts_are_the_feature_matching_sets_on_the_graph(tiny_segmenter):
    from ppd.envs import PointPromptEnv
    from ppd.envs.fm_starts import FeatureMatchStarts
    from ppd.envs.world import PromptWorld, state_from_prompts
    from ppd.prompts import feature_matching

    world = PromptWorld(tiny_segmenter, ProceduralScenes(TRAIN_DOMAIN, 2, seed=40), grid=16)
    env = PointPromptEnv("defender", world=world, start_mix={"fm": 1.0})
    env.reset(seed=0)
    assert env._start_kind == "coarse"  # a world without FM starts: coarse ones
    picker = ReferencePicker(lambda i: world.image(i).scene, 2, seed=0)
    world.fm_starts = FeatureMatchStarts(world, picker)
    for seed in range(3):
        env.reset(seed=seed)
        assert env._start_kind == "fm"
        rec, obj = env._rec, env._obj
        ref_image, ref_mask = picker(rec.index, obj)
        coords, labels = feature_matching(tiny_segmenter, ref_image, ref_mask, rec.scene.image)
        st, pts, _ = state_from_prompts(coords, labels, rec.grid, rec.hw, rec.centres)
        assert np.array_equal(env._state, st) and np.allclose(env._points, pts)
        assert (env._state == 1).sum() >= 1


def test_start_mix_with_fm_starts():
    mix = TrainConfig(fm_starts=0.25).defender_start_mix
    assert mix["fm"] == 0.25 and sum(mix.values()) == pytest.approx(1.0)
    assert mix["attacked"] == pytest.approx(0.3) and mix["ideal"] == pytest.approx(0.15)
    assert "fm" not in TrainConfig(fm_starts=0.0).defender_start_mix
    with pytest.raises(ValueError, match="fm_starts"):
        TrainConfig(fm_starts=1.5)
    assert TrainConfig(data="folder").data == ["folder"]


def test_a_run_saved_without_fm_starts_reads_as_trained_without_them(tmp_path):
    import yaml

    saved = TrainConfig().to_dict()
    del saved["fm_starts"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert TrainConfig.from_run(tmp_path).fm_starts == 0.0
    assert TrainConfig().fm_starts > 0


# ----------------------------------------------------------------------------- end to end
def test_train_on_a_folder_saves_loads_and_refines(tmp_path, tiny_segmenter, tiny_checkpoint):
    from ppd.agents.defender import PromptDefender
    from ppd.agents.train import train

    folder = write_folder(tmp_path / "mine")
    cfg = TrainConfig(seed=0, device="cpu", checkpoint=tiny_checkpoint, data=[str(folder)], n_envs=4, rounds=1,
                      attacker_steps=100, defender_steps=200, eval_scenes=2, learning_starts=32, buffer_size=400,
                      batch_size=8, target_update_interval=32, hidden_dim=16, n_examples=2, filter_scenes=0,
                      fm_starts=0.5, chooser_pairs=3, embedding_cache=str(tmp_path / "cache"), threads=1)
    out = tmp_path / "run"
    metrics = train(cfg, out)
    assert metrics["train_images"] == 4 and metrics["eval_images"] == 2
    final = metrics["final"]
    assert 0.0 <= final["defended_coarse_iou"] <= 1.0
    assert 0.0 <= final["fm_iou"] <= 1.0 and 0.0 <= final["defended_fm_iou"] <= 1.0  # the one-shot evaluation
    assert any((tmp_path / "cache").rglob("*")), "embeddings were cached"
    saved = TrainConfig.from_run(out)
    assert saved.data == [str(folder)] and saved.fm_starts == 0.5
    defender = PromptDefender.load(out, segmenter=tiny_segmenter)
    scene = open_training_data(saved).eval[0]
    ys, xs = np.nonzero(scene.masks[0])
    res = defender.refine(scene.image, np.array([[xs[0], ys[0]], [2.0, 2.0]], np.float32), np.array([1, 1]))
    assert res.mask.shape == scene.image.shape[:2] and len(res.point_labels) >= 1
    assert json.loads((out / "metrics.json").read_text())["train_images"] == 4
    # the run's one-shot edit chooser, fitted on the folder's objects, refines with a reference
    from ppd.oneshot_quality import load_chooser, refine_with_reference

    assert metrics["edit_chooser"]["pairs"] == 3 and 0.0 <= final["fm_choice_iou"] <= 1.0
    ref = open_training_data(saved).eval[1]
    coords, labels = feature_matching(tiny_segmenter, ref.image, ref.masks[0], scene.image)
    res = refine_with_reference(defender, scene.image, coords, labels, ref.image, ref.masks[0], load_chooser(out))
    assert res.mask.shape == scene.image.shape[:2] and res.kept.shape == (len(labels),)


def test_a_folder_of_procedural_scenes_trains_as_the_scenes_in_memory(tmp_path, tiny_checkpoint):
    """Without FM starts (whose references differ: a folder has no classes), training on
    the scenes written to a folder is training on the scenes drawn in memory."""
    import torch

    from ppd.agents.train import train

    base = dict(seed=0, device="cpu", checkpoint=tiny_checkpoint, n_envs=2, rounds=1, attacker_steps=24,
                defender_steps=32, scenes=3, eval_scenes=2, learning_starts=8, buffer_size=200, batch_size=8,
                target_update_interval=16, hidden_dim=16, n_examples=1, filter_scenes=0, fm_starts=0.0, threads=1)
    folder = tmp_path / "scenes"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, scene in enumerate(ProceduralScenes(TRAIN_DOMAIN, 3, seed=500_000)):  # seed 0's training scenes
        ids = np.zeros(scene.image.shape[:2], np.uint8)
        for k, m in enumerate(scene.masks):
            ids[m] = k + 1
        Image.fromarray(scene.image).save(folder / "images" / f"{i:04d}.png")
        Image.fromarray(ids).save(folder / "masks" / f"{i:04d}.png")
    memory = train(TrainConfig(**base), tmp_path / "memory")
    on_disk = train(TrainConfig(**base, data=[str(folder)], eval_data=["procedural:train"]), tmp_path / "folder")
    assert on_disk["final"] == memory["final"]
    assert memory["edit_chooser"] is None and not (tmp_path / "memory" / "edit_chooser.json").exists()  # no FM starts
    from ppd.agents.dqn import MaskedDQN

    a = MaskedDQN.load(str(tmp_path / "memory" / "defender.zip"), device="cpu").policy.state_dict()
    b = MaskedDQN.load(str(tmp_path / "folder" / "defender.zip"), device="cpu").policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def write_coco(root, n=4):
    """``root/ann.json`` + ``root/images``: n 64 x 64 images, each a small square of
    category 1 (its colour by image) and a larger one of category 2."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        img = np.full((64, 64, 3), 40, np.uint8)
        img[4:20, 4:20] = (200, 10 * i, 60)
        img[30:62, 20:62] = (60, 200, 10 * i)
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        images.append({"id": i + 1, "file_name": f"c{i}.png", "height": 64, "width": 64})
        for j, (cat, (x0, y0, x1, y1)) in enumerate(((1, (4, 4, 20, 20)), (2, (20, 30, 62, 62)))):
            anns.append({"id": 10 * i + j + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                         "area": float((x1 - x0) * (y1 - y0)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return root / "ann.json"


def test_coco_training_data_keeps_categories_and_draws_references_of_the_category(tmp_path):
    data = open_training_data(cfg_for(data=[str(write_coco(tmp_path / "coco"))]))
    assert (len(data.train), len(data.eval)) == (2, 2)
    train = list(data.train)
    for scene in train:  # objects in the loader's order (CocoDataset: largest first), each with its category
        assert scene.meta["category_ids"] == [2, 1] and scene.masks[1].sum() == 16 * 16
    pick = ReferencePicker(lambda i: train[i], 2, seed=0)
    for obj, cat_colour in ((0, 60), (1, 200)):
        image, mask = pick(0, obj)
        assert image is train[1].image and np.array_equal(mask, train[1].masks[obj])  # same category, other image
        assert image[mask][0, 0] == cat_colour
    largest = open_training_data(cfg_for(data=[str(tmp_path / "coco" / "ann.json")], max_objects=1))
    assert all(s.meta["category_ids"] == [2] and s.num_objects == 1 for s in largest.train)
