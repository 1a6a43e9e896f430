"""What the codes a lane reads have in common: the data codewords two of its last reads
shared, as likely values for a covered code's hidden codewords.

A token's QR data starts with its header (the "LT2:" prefix, then the issuer's fixed COSE
fields: algorithm, key id), and QR places the first data codewords in the symbol's
bottom-right corner, the one a thumb covers. Two tokens of one issuer share those codewords;
what differs (account, expiry, signature) is left out, as is anything a single read alone
would say. The covered pass tries the shared values for codewords it could not see
(`qr_symbol.repaired`'s `known`), after it has tried without: a wrong value is one more error
for Reed-Solomon, never a wrong read.

Each code is compared with each of the last `RECENT` different codes, not only the one read
just before: a code always in view (a sticker on the booth, a second phone) is read beside
each driver's, and the drivers' tokens must still meet each other.

Thread-safe: pipeline workers share the decoder. It keeps the last `RECENT` codes' data
codewords and up to `KEEP` shared patterns.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

KEEP = 4  # patterns: a lane sees few token issuers
RECENT = 8  # codes: more than are in view at once
MIN_SHARED = 8  # codewords: fewer in common is chance, not a header


class CommonWords:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[tuple[int, ...]] = deque(maxlen=RECENT)
        self._patterns: deque[Mapping[int, int]] = deque(maxlen=KEEP)
        self.learned = 0  # patterns kept so far: a code that failed may read with a new one

    def learn(self, stream: tuple[int, ...]) -> None:
        """A code read: the data codewords of its symbol (`qr_symbol.data_stream`)."""
        with self._lock:
            if stream in self._recent:
                return
            for earlier in self._recent:  # the oldest first: the latest pattern ends up first
                shared = {
                    i: v for i, (v, w) in enumerate(zip(stream, earlier, strict=False)) if v == w
                }
                if len(shared) >= MIN_SHARED and shared not in self._patterns:
                    self._patterns.appendleft(shared)
                    self.learned += 1
            self._recent.append(stream)

    def patterns(self) -> list[Mapping[int, int]]:
        """The shared patterns, the latest first."""
        with self._lock:
            return list(self._patterns)
