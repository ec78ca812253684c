"""Pseudonymous patient ids: a keyed hash (HMAC-SHA256) of site and raw id.

The key belongs to the lake (``storage.lake.Lake.secret``) and never enters a table; without it
the pseudonym cannot be linked back to the raw id, with it the site can recompute its mapping. It is
made once, for a new lake: a lake that holds patients and has lost its key is refused (LakeError),
never given a new one, which would store every patient again under other pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "p"


def pseudonymise(key: bytes, site: str, patient_id: str) -> str:
    """``p`` + 16 hex digits (64 bits) of HMAC-SHA256(key, site NUL patient_id)."""
    if not key:
        raise ValueError("the pseudonymisation key must not be empty")
    digest = hmac.new(key, f"{site}\x00{patient_id}".encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:16]
