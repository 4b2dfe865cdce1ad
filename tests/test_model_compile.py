"""`compile_blocks` (train.compile): torch.compile of every transformer block, in place. On CPU the
inductor backend runs the same code path a GPU does (other kernels), so what is checked here holds
there: the compiled blocks compute what the eager ones do, the teachers' CLS-attention path works,
names are unchanged, and no block is left eager by torch's recompile limit."""
from __future__ import annotations

import copy

import pytest
import torch

from xkd.models import compile_blocks
from xkd.models.transformer import make_block_stack, run_blocks


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test starts with no compiled code, counts from zero and gets the recompile limit back."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = limit


def test_compiled_blocks_compute_what_eager_blocks_do():
    torch.manual_seed(0)
    eager = make_block_stack(dim=32, depth=2, num_heads=2)
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled, "default") == 2
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints and exports unchanged

    x = torch.randn(3, 9, 32)
    inputs = [x.clone().requires_grad_(True) for _ in range(2)]
    outputs = [run_blocks(stack, tokens) for stack, tokens in zip((eager, compiled), inputs)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for out in outputs:
        out.square().sum().backward()
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, rtol=1e-4, atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-5, msg=name)

    # the teachers' path: the last block also gives the CLS query's attention row (run eagerly)
    with torch.no_grad():
        (out_e, row_e), (out_c, row_c) = (run_blocks(stack, x, return_cls_attention=True)
                                          for stack in (eager, compiled))
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(row_c, row_e, rtol=1e-4, atol=1e-5)
    assert row_c.shape == (3, 2, 9)


def test_every_block_is_compiled_whatever_its_drop_path_rate(fresh_compiler):
    """Blocks with their own drop-path rates each need their own compiled graph; with torch's limit
    set below the block count, compile_blocks must raise it, or the later blocks would run eagerly."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = 1
    stack = make_block_stack(dim=16, depth=3, num_heads=2, drop_path=0.2).train()  # rates 0, 0.1, 0.2
    compile_blocks(stack, "default")
    out = run_blocks(stack, torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 16)
    assert fresh_compiler["stats"]["unique_graphs"] == 3


def test_unknown_compile_modes_are_refused():
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_blocks(make_block_stack(dim=16, depth=1, num_heads=2), "fast")
    stack = make_block_stack(dim=16, depth=1, num_heads=2)
    assert compile_blocks(stack, "none") == 0
    assert not hasattr(stack[0], "_compiled_call_impl") or stack[0]._compiled_call_impl is None


@pytest.mark.gpu
def test_compiled_blocks_on_a_gpu_match_eager_in_bf16():
    """Inductor's GPU kernels (Triton), under bf16 autocast as training runs them."""
    torch.manual_seed(0)
    eager = make_block_stack(dim=64, depth=2, num_heads=4).cuda()
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled, "default")
    x = torch.randn(4, 33, 64, device="cuda")
    inputs = [x.clone().requires_grad_(True) for _ in range(2)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = [run_blocks(stack, tokens) for stack, tokens in zip((eager, compiled), inputs)]
    torch.testing.assert_close(outputs[1].float(), outputs[0].float(), rtol=2e-2, atol=2e-2)
    for out in outputs:
        out.float().square().sum().backward()
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, rtol=5e-2, atol=5e-2)
