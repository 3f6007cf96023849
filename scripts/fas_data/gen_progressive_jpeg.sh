#!/usr/bin/env bash
# A progressive JPEG with the least scan data a valid file can have:
# a uniform grey 1024x1024 picture, written by libjpeg-turbo's cjpeg (an
# encoder independent of the Rust code) with a scan script that has no DC
# refinement pass (one DC scan, one AC scan covered by end-of-band runs),
# as mozjpeg's default script does. Its scans hold about 1 bit per 8x8
# block, below the 2 bits a sequential file needs: the image_io check must
# not hold it to the sequential floor. djpeg decodes every pixel to 128.
#
# Needs libjpeg-turbo-progs (Debian: apt-get install libjpeg-turbo-progs).
# Run from the repository root:
#     bash scripts/fas_data/gen_progressive_jpeg.sh
# Generated with cjpeg/djpeg of libjpeg-turbo 2.1.5 (Debian 12).
set -euo pipefail
out=crates/fas-data/tests/fixtures/jpeg/progressive_no_dc_refinement_grey_1024.jpg
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/grey.pgm" <<'PY'
import sys
w = h = 1024
with open(sys.argv[1], "wb") as f:
    f.write(b"P5\n%d %d\n255\n" % (w, h) + bytes([128]) * (w * h))
PY
cat > "$tmp/scans.txt" <<'SCANS'
0: 0 0 0 0;
0: 1 63 0 0;
SCANS
cjpeg -grayscale -scans "$tmp/scans.txt" -outfile "$out" "$tmp/grey.pgm"
# The reference decode: every pixel 128.
djpeg -pnm "$out" | tail -c $((1024 * 1024)) | python3 -c \
  'import sys; d = sys.stdin.buffer.read(); assert set(d) == {128}, set(d); print("djpeg: all", len(d), "pixels are 128")'
