"""Drafts for speculative decoding, from n-grams of the model's earlier replies (no draft model).

A Cas-SEAT student writes in a few fixed shapes ("Step 2: I read the value in Mar as 39.",
"Going back over each step:", "this checks out", "Verdict: Accept"), so after a handful of
problems the tokens that followed the last few tokens before are a good guess for the next ones.
`NgramDrafter` keeps, for every 2- to 4-token sequence of the replies it has seen, how often each
next token followed it, and drafts by chaining the majority continuation (seen at least twice,
more than half of the time), longest context first. The engine then checks the whole draft in one
forward pass (`Engine.verify`) and greedy decoding keeps the longest prefix that matches its own
choices, plus one token of its own: the text is greedy decoding's, in fewer passes, up to the
last bits of a batch's arithmetic, which can flip a near tie (measured in the README).

    drafter = NgramDrafter()
    drafter.observe(reply_ids)            # after each turn
    drafter.propose(context_ids, 8)       # up to 8 next tokens, [] when nothing is likely
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramDrafter:
    """Majority next tokens of 2..`max_n`-token contexts in the replies observed so far."""

    def __init__(self, max_n: int = 4, min_count: int = 2, max_entries: int = 200_000) -> None:
        self.max_n, self.min_count, self.max_entries = max_n, min_count, max_entries
        self._counts: dict[tuple[int, ...], dict[int, int]] = {}
        self._best: dict[tuple[int, ...], tuple[int, int, int]] = {}  # token, its count, total

    def __len__(self) -> int:
        return len(self._best)

    def observe(self, ids: Sequence[int]) -> None:
        """Learn the n-grams of one reply (a bounded table: new contexts stop being added when
        it holds `max_entries`; those it has keep counting)."""
        ids = list(ids)
        for n in range(2, self.max_n + 1):
            for end in range(n, len(ids)):
                self._add(tuple(ids[end - n : end]), ids[end])

    def _add(self, key: tuple[int, ...], token: int) -> None:
        counts = self._counts.get(key)
        if counts is None:
            if len(self._best) >= self.max_entries:
                return
            counts = self._counts[key] = {}
        count = counts[token] = counts.get(token, 0) + 1
        best, best_count, total = self._best.get(key, (token, 0, 0))
        if count > best_count:
            best, best_count = token, count
        self._best[key] = (best, best_count, total + 1)

    def next_token(self, context: Sequence[int]) -> int | None:
        """The likely next token after `context`, or None."""
        for n in range(min(self.max_n, len(context)), 1, -1):
            found = self._best.get(tuple(context[-n:]))
            if found is not None:
                token, count, total = found
                if count >= self.min_count and 2 * count > total:
                    return token
        return None

    def propose(self, context: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` tokens to follow `context`; stops at the first unlikely one."""
        tail = list(context[-self.max_n :])
        draft: list[int] = []
        while len(draft) < limit:
            token = self.next_token(tail)
            if token is None:
                break
            draft.append(token)
            tail = [*tail[1:], token] if len(tail) >= self.max_n else [*tail, token]
        return draft
