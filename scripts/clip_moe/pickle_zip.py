"""Shared by the pickle fixture generators: writes a pickle as the
`archive/data.pkl` of a PyTorch-style zip checkpoint, with a fixed
timestamp so the same pickle gives the same bytes on every run."""

import io
import pathlib
import zipfile


def write_pickle_zip(out: pathlib.Path, pickle: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("archive/data.pkl", date_time=(2026, 1, 1, 0, 0, 0))
        archive.writestr(info, pickle)
    out.write_bytes(buffer.getvalue())
    print(f"wrote {out} ({len(buffer.getvalue())} bytes)")
