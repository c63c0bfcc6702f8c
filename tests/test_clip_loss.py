"""The contrastive loss: the symmetric cross-entropy, and under DDP (2 gloo processes) the same loss and
gradients as one process on the concatenated batch."""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clip.loss import ClipLoss

B, D_IN, E = 4, 6, 5


def _setup():
    torch.manual_seed(0)
    proj_i, proj_t = torch.nn.Linear(D_IN, E), torch.nn.Linear(D_IN, E)
    scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    x_img, x_txt = torch.randn(2 * B, D_IN), torch.randn(2 * B, D_IN)
    return proj_i, proj_t, scale, x_img, x_txt


def _step(local_loss: bool, rows: slice):
    proj_i, proj_t, scale, x_img, x_txt = _setup()
    image = F.normalize(proj_i(x_img[rows]), dim=-1)
    text = F.normalize(proj_t(x_txt[rows]), dim=-1)
    loss = ClipLoss(local_loss=local_loss)(image, text, scale.exp())
    loss.backward()
    grads = [p.grad for p in (*proj_i.parameters(), *proj_t.parameters(), scale)]
    return loss.detach(), grads


def _worker(rank: int, port: int, out_path: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    out = {}
    try:
        for local_loss in (False, True):
            loss, grads = _step(local_loss, slice(rank * B, (rank + 1) * B))
            # what DDP does: average gradients (and here the logged loss) over ranks
            for g in [loss, *grads]:
                dist.all_reduce(g)
                g /= 2
            out[local_loss] = (loss, grads)
        if rank == 0:  # a plain file: no Manager proxies or shared-memory tensors outliving the worker
            torch.save(out, out_path)
        dist.barrier()  # both ranks finish their collectives before either tears gloo down
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_loss_is_symmetric_cross_entropy():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    logits = 7.0 * image @ text.t()
    want = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.t(), torch.arange(3))) / 2
    assert torch.allclose(ClipLoss()(image, text, torch.tensor(7.0)), want)
    # matched pairs give a lower loss than shuffled ones
    assert ClipLoss()(image, image, torch.tensor(7.0)) < ClipLoss()(image, image.flip(0), torch.tensor(7.0))


def test_two_gloo_processes_match_one_process(tmp_path):
    out_path = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out_path)), nprocs=2, join=True)
    out = torch.load(out_path, weights_only=True)
    for local_loss in (False, True):  # open_clip's default and its --local-loss
        want_loss, want_grads = _step(local_loss, slice(0, 2 * B))
        got_loss, got_grads = out[local_loss]
        assert torch.allclose(got_loss, want_loss, atol=1e-5)
        for got, want in zip(got_grads, want_grads):
            assert torch.allclose(got, want, atol=1e-5), (local_loss, (got - want).abs().max())
