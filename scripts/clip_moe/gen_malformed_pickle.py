"""Write crates/clip-moe/tests/fixtures/malformed_pickle/pytorch_model.bin:
a PyTorch-style zip whose data.pkl is a well-formed pickle of a malformed
checkpoint. It maps the name "w" to torch._utils._rebuild_tensor_v2 called
with no arguments, where torch.save writes six. Python's pickletools reads
it as valid pickle; a reader that indexes the arguments without checking
their count fails on it. tests/pytorch_bin.rs checks that loading it is an
error naming the file, not a crash.

Run from the repository root (standard library only):

    python3 scripts/clip_moe/gen_malformed_pickle.py
"""

import io
import pathlib
import pickletools
import struct

from pickle_zip import write_pickle_zip

OUT = pathlib.Path(__file__).resolve().parents[2] / (
    "crates/clip-moe/tests/fixtures/malformed_pickle/pytorch_model.bin"
)


def main():
    ops = [
        b"\x80\x02",  # PROTO 2
        b"ccollections\nOrderedDict\n",  # GLOBAL
        b")",  # EMPTY_TUPLE
        b"R",  # REDUCE: OrderedDict()
        b"X" + struct.pack("<I", 1) + b"w",  # BINUNICODE "w"
        b"ctorch._utils\n_rebuild_tensor_v2\n",  # GLOBAL
        b")",  # EMPTY_TUPLE: no arguments
        b"R",  # REDUCE
        b"s",  # SETITEM
        b".",  # STOP
    ]
    pickle = b"".join(ops)
    pickletools.dis(io.BytesIO(pickle))  # valid pickle, or this raises
    write_pickle_zip(OUT, pickle)


if __name__ == "__main__":
    main()
