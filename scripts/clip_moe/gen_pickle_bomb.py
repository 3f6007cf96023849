"""Write crates/clip-moe/tests/fixtures/pickle_bomb/pytorch_model.bin: a
PyTorch-style zip whose data.pkl is a valid pickle of under 1 KiB: a list
of 41 lists, each after the first holding the one before it twice (two
BINGETs of its memo entry, APPENDS, BINPUT). Python shares the inner lists
and unpickles it at once; a reader that copies memo entries (candle's)
would need 2^40 copies of the first list and exhausts memory.
tests/pytorch_bin.rs checks that loading it is an error naming the file.

Run from the repository root (standard library only):

    python3 scripts/clip_moe/gen_pickle_bomb.py
"""

import io
import pathlib
import pickle
import pickletools

from pickle_zip import write_pickle_zip

OUT = pathlib.Path(__file__).resolve().parents[2] / (
    "crates/clip-moe/tests/fixtures/pickle_bomb/pytorch_model.bin"
)
ROUNDS = 40


def main():
    # PROTO 2, EMPTY_LIST (the outer list), EMPTY_LIST, BINPUT 0, APPEND
    ops = [b"\x80\x02", b"]", b"]q\x00a"]
    for i in range(ROUNDS):
        # EMPTY_LIST, MARK, BINGET i, BINGET i, APPENDS, BINPUT i+1, APPEND
        ops.append(b"](h" + bytes([i]) + b"h" + bytes([i]) + b"eq" + bytes([i + 1]) + b"a")
    ops.append(b".")  # STOP
    data = b"".join(ops)
    pickletools.dis(io.BytesIO(data), out=io.StringIO())  # valid, or this raises
    # Python shares the memo's objects: each list holds the one before twice.
    lists = pickle.loads(data)
    assert len(lists) == ROUNDS + 1 and lists[0] == []
    for inner, outer in zip(lists, lists[1:]):
        assert len(outer) == 2 and outer[0] is inner and outer[1] is inner
    write_pickle_zip(OUT, data)


if __name__ == "__main__":
    main()
