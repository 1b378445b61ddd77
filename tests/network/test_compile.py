"""torch.compile on the CPU: the whole network traces as one graph (no graph break) and the
compiled forward and backward match eager.

The test compiles with backend="aot_eager": Dynamo's full-graph capture and AOTAutograd's joint
forward/backward graph, which is where custom ops and autograd.Functions break or not, without
inductor's C++ code generation (minutes on this 2-core machine for a tiny network; run once by
hand with backend="inductor", see docs/network.md)."""
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
