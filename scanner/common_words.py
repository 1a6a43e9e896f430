"""What the codes a lane reads have in common: the data codewords two successive reads
shared, as likely values for a covered code's hidden codewords.

A token's QR data starts with its header (the "LT2:" prefix, then the issuer's fixed COSE
fields: algorithm, key id), and QR places the first data codewords in the symbol's
bottom-right corner, the one a thumb covers. Two tokens of one issuer share those codewords;
what differs (account, expiry, signature) is left out, as is anything a single read alone
would say. The covered pass tries the shared values for codewords it could not see
(`qr_symbol.repaired`'s `known`), after it has tried without: a wrong value is one more error
for Reed-Solomon, never a wrong read.

Thread-safe: pipeline workers share the decoder. It keeps the last code's data codewords (one
code, as the pipeline's deduplication keeps its text) and up to `KEEP` shared patterns.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

KEEP = 4  # patterns: a lane sees few token issuers
MIN_SHARED = 8  # codewords: fewer in common is chance, not a header


class CommonWords:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[int, ...] | None = None
        self._patterns: deque[Mapping[int, int]] = deque(maxlen=KEEP)
        self.learned = 0  # patterns kept so far: a code that failed may read with a new one

    def learn(self, stream: tuple[int, ...]) -> None:
        """A code read: the data codewords of its symbol (`qr_symbol.data_stream`)."""
        with self._lock:
            last, self._last = self._last, stream
            if last is None or last == stream:
                return
            shared = {i: v for i, (v, w) in enumerate(zip(stream, last, strict=False)) if v == w}
            if len(shared) < MIN_SHARED or shared in self._patterns:
                return
            self._patterns.appendleft(shared)
            self.learned += 1

    def patterns(self) -> list[Mapping[int, int]]:
        """The shared patterns, the latest first."""
        with self._lock:
            return list(self._patterns)
