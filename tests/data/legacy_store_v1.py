"""How legacy-store-v1.tar.gz was made (kept for the record; not run by the tests).

Run with the code of commit 5690eaa (version 1 packs without an owner, pool 0
recorded as an absolute file:// URL), then
``tar czf legacy-store-v1.tar.gz --exclude=lock.mdb state`` in its parent.
tests/test_state.py regenerates the same contents from the same seed.
"""

import random

from gfs import Client

root = "/tmp/hutong-legacy-fixture/state"
fs = Client.init(root)
r = random.Random(15)
fs.mkdir("/data/sub", parents=True)
for i in range(5):
    fs.write_bytes(f"/data/f{i}.bin", r.randbytes(3000 + 1000 * i))
fs.write_bytes("/data/sub/text.txt", b"hutong legacy store\n" * 200)
fs.write_bytes("/data/sub/gone.bin", r.randbytes(3000))
fs.rm("/data/sub/gone.bin")
fs.symlink("/data/link", "f0.bin")
fs.close()
