import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from data_helpers import write_damaged_shard, write_img2dataset_shard, write_shapes

from data.datamodule import ImageTextDataModule, ShapesDataModule, expand_urls


def _all(loader):
    return list(loader)


def test_batches_have_the_documented_format(tmp_path):
    write_shapes(tmp_path, count=30, shard_size=10)
    dm = ImageTextDataModule(
        val=str(tmp_path / "train-{000000..000002}.tar"), batch_size=8, num_workers=0, image_size=32
    )
    batches = _all(dm.val_dataloader())
    b = batches[0]
    assert b["image"].shape == (8, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["text"].shape == (8, 77) and b["text"].dtype == torch.long
    assert isinstance(b["caption"][0], str) and b["meta"][0]["caption"] == b["caption"][0]
    assert b["key"][0].isdigit() and len(b["key"][0]) == 9
    # one process, evaluation: every sample exactly once
    keys = [k for x in batches for k in x["key"]]
    assert sorted(keys) == [f"{i:09d}" for i in range(30)]
    unit = ImageTextDataModule(
        val=str(tmp_path), batch_size=4, num_workers=0, normalize="unit", tokenizer="byte", context_length=16
    )
    u = next(iter(unit.val_dataloader()))
    assert 0 <= u["image"].min() and u["image"].max() <= 1 and u["text"].shape == (4, 16)


def test_training_stream_has_fixed_length_with_workers(tmp_path):
    write_shapes(tmp_path, count=50, shard_size=10)
    dm = ImageTextDataModule(
        train=str(tmp_path / "train-*.tar"), batch_size=8, num_workers=2, tokenizer="byte", shuffle_buffer=16
    )
    loader = dm.train_dataloader()
    first, second = _all(loader), _all(loader)
    assert len(loader) == len(first) == len(second) == 6  # 50 // 8
    assert all(len(b["key"]) == 8 for b in first)
    assert [b["key"] for b in first] != [b["key"] for b in second]  # reshuffled each epoch


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    info = write_damaged_shard(tmp_path / "bad-000000.tar")
    dm = ImageTextDataModule(val=str(tmp_path / "bad-000000.tar"), batch_size=4, num_workers=0, tokenizer="byte")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = [k for b in dm.val_dataloader() for k in b["key"]]
    assert sorted(keys) == info["good"]
    assert dm.skipped == 2
    assert sum("skipped sample" in str(w.message) for w in caught) == 2


def test_skipped_count_is_shared_with_workers(tmp_path):
    write_damaged_shard(tmp_path / "bad-000000.tar")
    write_damaged_shard(tmp_path / "bad-000001.tar")
    dm = ImageTextDataModule(
        val=str(tmp_path / "bad-{000000..000001}.tar"), batch_size=4, num_workers=2, tokenizer="byte"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = sum(len(b["key"]) for b in dm.val_dataloader())
    assert n == 12 and dm.skipped == 4


def test_img2dataset_shards_and_pipe_urls(tmp_path):
    write_img2dataset_shard(tmp_path, 0, 5)
    write_img2dataset_shard(tmp_path, 1, 5)
    dm = ImageTextDataModule(
        train=str(tmp_path / "{00000..00001}.tar"), batch_size=5, num_workers=0, image_size=64, tokenizer="byte"
    )
    batches = _all(dm.train_dataloader())
    assert len(batches) == 2  # 10 samples from the _stats.json files
    assert batches[0]["image"].shape == (5, 3, 64, 64) and batches[0]["meta"][0]["status"] == "success"
    assert len(batches[0]["key"][0]) == 9
    piped = ImageTextDataModule(val=f"pipe:cat {tmp_path / '00000.tar'}", batch_size=5, num_workers=0, tokenizer="byte")
    assert len(_all(piped.val_dataloader())[0]["key"]) == 5
    assert expand_urls("a-{000..002}.tar::b.tar") == ["a-000.tar", "a-001.tar", "a-002.tar", "b.tar"]


def test_shapes_datamodule_renders_once_and_exposes_heldout(tmp_path):
    root = tmp_path / "shapes"
    dm = ShapesDataModule(
        root=str(root),
        train_count=20,
        val_count=10,
        heldout_count=10,
        shard_size=10,
        batch_size=5,
        num_workers=0,
        tokenizer="byte",
        heldout_in_val=True,
    )
    dm.prepare_data()
    stamp = (root / "train-000000.tar").stat().st_mtime_ns
    dm.prepare_data()  # nothing re-rendered
    assert (root / "train-000000.tar").stat().st_mtime_ns == stamp
    val, held = dm.val_dataloader()
    assert all(b["meta"][0]["split"] == "val" for b in val)
    assert {b["meta"][0]["split"] for b in dm.test_dataloader()} == {"heldout"}
    assert len(_all(dm.train_dataloader())) == 4


def _ddp_worker(rank: int, world: int, init: str, pattern: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        dm = ImageTextDataModule(train=pattern, batch_size=4, num_workers=1, tokenizer="byte", train_samples=50)
        keys = [b["key"] for b in dm.train_dataloader()]
        torch.save({"keys": keys}, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_shards_and_equal_batches(tmp_path):
    # 5 shards of 10: rank 0 gets shards 0, 2, 4 (30 samples), rank 1 gets 1, 3 (20 samples)
    write_shapes(tmp_path, count=50, shard_size=10)
    init = f"file://{tmp_path}/init"
    # fork: the children inherit the imports (spawning re-imports torch + lightning: slow on 2 cores)
    args = (2, init, str(tmp_path / "train-{000000..000004}.tar"), str(tmp_path))
    tmp.start_processes(_ddp_worker, args=args, nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt")["keys"] for r in (0, 1))
    assert len(r0) == len(r1) == 50 // 2 // 4  # every rank the same number of batches (no DDP hang)
    k0, k1 = {k for b in r0 for k in b}, {k for b in r1 for k in b}
    assert {int(k) // 10 for k in k0} == {0, 2, 4} and {int(k) // 10 for k in k1} == {1, 3}
