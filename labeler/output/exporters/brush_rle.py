"""Label Studio's brush RLE: a mask as the bit-packed run-length code its brush tool reads.

The code covers the mask as RGBA pixels flattened row by row (H * W * 4 bytes, every channel 255
inside the mask, 0 outside). Bit layout, most significant bit first:

- header: the value count (32 bits), the word size minus one (5 bits; 8-bit words), then four
  run-length field sizes minus one (4 bits each; sizes 3, 4, 8 and 16 bits);
- then groups until the count is reached: a flag bit (1: one value repeated), the index of the
  length field size (2 bits), the run length minus one in that many bits, and the value (8 bits).

Every group here is a repeated run (the flag 0, literal groups, is never needed); runs longer than
2**16 values are split. The bit string is zero-padded to whole bytes.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
LENGTH_BITS = (3, 4, 8, 16)


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """The brush RLE bytes of an (H, W) 0/1 mask, as Label Studio's ``rle`` list of ints."""
    values = np.repeat(np.where(mask.ravel() > 0, 255, 0).astype(np.uint8), 4)
    fields: list[tuple[int, int]] = [(values.size, 32), (WORD_BITS - 1, 5)]
    fields += [(size - 1, 4) for size in LENGTH_BITS]
    starts = np.flatnonzero(np.diff(values.astype(np.int16), prepend=-1))
    ends = np.append(starts[1:], values.size)
    longest = 1 << LENGTH_BITS[-1]
    for start, end in zip(starts.tolist(), ends.tolist()):
        value = int(values[start])
        while start < end:
            length = min(end - start, longest)
            index = next(i for i, bits in enumerate(LENGTH_BITS) if length - 1 < 1 << bits)
            fields += [(1, 1), (index, 2), (length - 1, LENGTH_BITS[index]), (value, WORD_BITS)]
            start += length
    bits = "".join(format(number, f"0{width}b") for number, width in fields)
    bits += "0" * (-len(bits) % 8)
    return np.packbits(np.frombuffer(bits.encode(), np.uint8) - ord("0")).tolist()
