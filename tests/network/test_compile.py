"""torch.compile on the CPU: the whole network traces as one graph (no graph break) and the
compiled forward and backward match eager.

The test compiles with backend="aot_eager": Dynamo's full-graph capture and AOTAutograd's joint
forward/backward graph, which is where custom ops and autograd.Functions break or not, without
inductor's C++ code generation (minutes on this 2-core machine for a tiny network; run once by
hand with backend="inductor", see docs/network.md). `torch._dynamo.explain` counts the graph breaks
of a first forward, before any eager step has cached the scan plans, as in nnU-Net's training."""
import pytest
import torch

from nnunet_sss import RWKVSSSUNet

from network_cases import tiny_kwargs


def test_compiled_network_matches_eager():
    torch.manual_seed(0)
    net = RWKVSSSUNet(**tiny_kwargs(2, n_stages=2, features_per_stage=[8, 16], strides=[1, 2]))
    x = torch.randn(2, 1, 8, 12)
    params = list(net.parameters())

    def loss_and_grads(model):
        outputs = model(x)
        loss = sum(o.square().mean() for o in outputs)
        return outputs, torch.autograd.grad(loss, params)

    eager_out, eager_grads = loss_and_grads(net)
    compiled_out, compiled_grads = loss_and_grads(torch.compile(net, backend="aot_eager", fullgraph=True))
    for a, b in zip(compiled_out, eager_out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_dims,shape,options", [
    (2, (1, 28, 36), {}),
    (3, (1, 20, 12, 16), {}),
    (2, (1, 36, 28), dict(scan="raster", shift="global", wkv_pool=(1,), upsample="transpose")),
    (2, (1, 44, 20), dict(use_rwkv=False)),
], ids=["2d", "3d", "2d-ablations", "2d-no-rwkv"])
def test_first_forward_traces_in_one_graph(n_dims, shape, options):
    """nnU-Net compiles the network before its first step, so TorchDynamo traces a forward at an
    input size the network has not seen (no cached scan plans): no graph break there either.
    Each case has a size of its own; the ablation case switches every alternative path on."""
    torch._dynamo.reset()
    net = RWKVSSSUNet(**tiny_kwargs(n_dims, **options))
    explained = torch._dynamo.explain(net)(torch.randn(2, *shape))
    where = sorted({f"{f.filename}:{f.lineno}" for b in explained.break_reasons for f in b.user_stack[-1:]})
    assert explained.graph_break_count == 0, f"{explained.graph_break_count} graph breaks at {where}"
