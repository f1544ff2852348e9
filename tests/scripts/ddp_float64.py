"""Train test_resnet in float64 with the HSIC regulariser on uneven rank pieces, in
one process or under torchrun; rank 0 writes the weights to ARGV[1].

In float64 the reduction-order noise of float32 (which ill-conditioned batch-norm
batches amplify) is gone, so single-process and DDP training must agree to ~1e-12:
this checks the loss weighting, the global batch norm and the regulariser's gather
exactly. Run by tests/test_distributed.py."""

import sys

import torch
from safetensors.torch import save_file

from mi_probe.builtin.adapters.resnet import ResNetAdapter
from mi_probe.builtin.datasets.synthetic import SyntheticParams, SyntheticSource
from mi_probe.builtin.regularizers.hsic import HSICParams, HSICRegularizer
from mi_probe._core.distributed import init_from_env
from mi_probe.interfaces import DataBundle
from mi_probe._core.models import build_model
from mi_probe._core.sites import resolve_sites
from mi_probe._core.spec import TrainSpecBase
from mi_probe._core.train import train_model


class Float64(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        x, y = self.items[i]
        return x.double(), y


torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
raw = SyntheticSource(SyntheticParams(n_classes=3, n_train=105, n_val=30, image_size=16,
                                      noise=0.5)).load()
data = DataBundle(Float64(raw.train), Float64(raw.val), raw.classes)
ctx = init_from_env("cpu")
model = build_model("test_resnet", 3, seed=0)
reg = HSICRegularizer(HSICParams(sites=["layer4.*.post_add", "layer3.*.post_add"], lam=0.5))
sites = resolve_sites(model, ResNetAdapter(), torch.stack([data.val[0][0], data.val[1][0]]),
                      reg.site_patterns)
# 105 samples, global batches of 16: pieces 8 + 8, and the last batch of 9 is 5 + 4
cfg = TrainSpecBase(epochs=2, batch_size=16, lr=0.02)
result = train_model(model, data, cfg, 0, torch.device("cpu"), regularizers=[(reg, sites)],
                     progress=False, log=lambda m: None, dist_ctx=ctx)
if ctx is None or ctx.is_main:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1],
              metadata={"best_epoch": str(result.best_epoch)})
