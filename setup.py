"""Build of the C extensions from native/ (plain CPython C API).

`depends` lists each extension's headers: setuptools puts them in the sdist
(so the wheel builds from it) and rebuilds an extension when one changes.
"""

import os
import shutil
import subprocess
import sysconfig

from setuptools import Extension, setup


def _have_ipsec_mb() -> bool:
    """Whether intel-ipsec-mb's header and library can be built against here.

    Debian packages it for x86-64 only; elsewhere the mover seals AES-GCM with
    OpenSSL. HUTONG_IPSEC_MB=0 or 1 overrides the probe.
    """
    forced = os.environ.get("HUTONG_IPSEC_MB")
    if forced in ("0", "1"):
        return forced == "1"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not shutil.which(cc):
        return False
    probe = subprocess.run(
        [cc, "-x", "c", "-", "-o", os.devnull, "-lIPSec_MB"],
        input=b"#include <intel-ipsec-mb.h>\nint main(void){return imb_get_version() == 0;}\n",
        capture_output=True, check=False,
    )
    return probe.returncode == 0


IPSEC_MB = _have_ipsec_mb()

setup(
    ext_modules=[
        Extension(
            "gfs._native",
            sources=["native/module.c", "native/fastcdc.c", "native/chunkid.c", "native/superfeat.c",
                     "native/restore.c", "native/metarec.c", "native/localscan.c"],
            depends=["native/fastcdc.h", "native/chunkid.h", "native/superfeat.h",
                     "native/restore.h", "native/metarec.h", "native/localscan.h"],
            include_dirs=["native"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        ),
        Extension(
            "gfs._mover",
            sources=["native/mover_module.c", "native/mover.c", "native/mover_record.c"],
            depends=["native/mover.h", "native/mover_record.h"],
            include_dirs=["native"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            extra_link_args=["-pthread"],
            # OpenSSL libcrypto (Debian: libssl-dev): HMAC, HKDF, X25519, ChaCha20-Poly1305;
            # intel-ipsec-mb (Debian: libipsec-mb-dev, x86-64): AES-GCM records (VAES, AVX-512)
            define_macros=[("HUTONG_IPSEC_MB", "1")] if IPSEC_MB else [],
            libraries=["crypto", "IPSec_MB"] if IPSEC_MB else ["crypto"],
        ),
        Extension(
            "gfs._sealed",
            sources=["native/sealed_module.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        ),
        Extension(
            "gfs._rowpack",  # packed metadata blocks' per-row loops (gfs/meta/blocks.py)
            sources=["native/rowpack.c"],
            # no fused multiply-adds: the packer's line must round as the Python it was
            extra_compile_args=["-O2", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra",
                                "-Werror=implicit-function-declaration"],
        ),
        Extension(
            "gfs._delayline",
            sources=["native/delayline.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        ),
        Extension(
            "privacy._ec",
            sources=["native/privacy_module.c", "native/privacy_ec.c", "native/privacy_ec_ifma.c"],
            depends=["native/privacy_ec.h"],
            include_dirs=["native"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        ),
        Extension(
            "privacy._psi_ot",
            sources=["native/psi_ot_module.c", "native/psi_ot.c"],
            depends=["native/psi_ot.h"],
            include_dirs=["native"],
            extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            libraries=["crypto"],  # OpenSSL libcrypto: AES (AES-NI), SHA-256, RAND_bytes
        ),
    ]
)
