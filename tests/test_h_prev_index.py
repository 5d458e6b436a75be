"""The backward's gather index for packed input (csrc/h_prev_index.cpp), checked without a GPU.

dW_hh = Σ_t δ_tᵀ h_prev_t gathers each row's h_prev from [y; h0]. The CPU builds the index with a
loop over the rows on the host; CUDA builds it from the step table already on the device, with
tensor ops (no host loop, no copy, no synchronisation). torch.ops.fused_rnn_emulation.h_prev_index
runs both forms on the CPU: they must agree for every PackedSequence layout, both directions.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fused_rnn  # noqa: F401  (loads the library that registers the emulation ops)

both_forms = torch.ops.fused_rnn_emulation.h_prev_index


def batch_sizes(lengths):
    """PackedSequence.batch_sizes of sequences of these lengths."""
    return pack_sequence([torch.zeros(n, 1) for n in lengths], enforce_sorted=False).batch_sizes


@pytest.mark.parametrize("reverse", [False, True], ids=["forward_direction", "reverse_direction"])
@pytest.mark.parametrize("lengths", [[1], [5], [3, 3, 3], [7, 3, 9, 1, 9, 4], [2, 1], [12, 11, 1, 1, 1],
                                     list(range(1, 40))], ids=lambda v: f"lengths{len(v)}")
def test_table_form_matches_the_host_loop(lengths, reverse):
    on_host, from_table = both_forms(batch_sizes(lengths), reverse)
    assert on_host.dtype == from_table.dtype == torch.int64
    assert torch.equal(on_host, from_table)


def test_random_layouts():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        B = int(torch.randint(1, 12, (1,), generator=gen))
        lengths = torch.randint(1, 30, (B,), generator=gen).tolist()
        bs = batch_sizes(lengths)
        for reverse in (False, True):
            on_host, from_table = both_forms(bs, reverse)
            assert torch.equal(on_host, from_table), (lengths, reverse)


def test_what_the_index_says():
    """Lengths 3 and 1: rows are [t0: a, b | t1: a | t2: a], N = 4, h0 rows from 4. Forward: t0 reads
    h0 (rows 4, 5), t1 reads row 0, t2 reads row 2. Reverse: a starts at t2 from h0 (row 4), t1 reads
    t2's row 3, t0 reads t1's row 2 for a and h0 for b (row 5)."""
    bs = batch_sizes([3, 1])
    assert both_forms(bs, False)[0].tolist() == [4, 5, 0, 2]
    assert both_forms(bs, True)[0].tolist() == [2, 5, 3, 4]
