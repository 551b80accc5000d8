"""Speculative decoding from n-gram drafts (runtime/draft.py, `Conversation` with a drafter):
the drafter's majority rule, the decode loop's bookkeeping on a scripted engine whose replies are
known, and on the real backends (torch, llama.cpp, onnxruntime; tiny models): the same greedy
text as one token per pass, with drafts checked and kept."""

from __future__ import annotations

import numpy as np
import pytest

from casseat_edge.prompts import assistant, stage1_messages, stage2_messages
from runtime import Cascade
from runtime.backends import Conversation, Engine
from runtime.draft import NgramDrafter
from tests.test_cross_backend import CAPTION, PROBLEM, image_for, open_engine
from tests.test_runtime import ScriptedEngine


def test_drafter_drafts_majority_continuations_longest_context_first():
    drafter = NgramDrafter(max_n=3)
    assert drafter.propose([1, 2], 4) == []  # nothing seen yet
    drafter.observe([1, 2, 3, 4, 5])
    assert drafter.propose([1, 2], 4) == []  # seen once: not yet likely
    drafter.observe([9, 1, 2, 3, 4, 6])
    # (1, 2) -> 3 twice, (2, 3) -> 4 twice, then (3, 4) -> 5 once, 6 once: no majority
    assert drafter.propose([7, 1, 2], 8) == [3, 4]
    assert drafter.propose([7, 1, 2], 1) == [3]
    assert drafter.propose([1, 2], 0) == []
    # a longer context overrides a shorter one's majority
    drafter = NgramDrafter(max_n=3)
    for _ in range(3):
        drafter.observe([5, 1, 2, 7])
    for _ in range(2):
        drafter.observe([6, 1, 2, 8])
    assert drafter.next_token([0, 1, 2]) == 7  # only (1, 2) matches: 7 three times of five
    assert drafter.next_token([6, 1, 2]) == 8  # (6, 1, 2) -> 8 both times
    # without a majority, no draft: 3 of 6 is not more than half
    drafter.observe([4, 1, 2, 9])
    assert drafter.next_token([0, 1, 2]) is None


def test_drafter_table_is_bounded():
    drafter = NgramDrafter(max_n=2, max_entries=3)
    drafter.observe(list(range(20)))
    assert len(drafter) == 3
    drafter.observe([0, 1, 2])  # known contexts keep counting
    assert drafter.propose([0, 1], 5) == [2]


# ---------------------------------------------------------------- a scripted engine
class PositionEngine(ScriptedEngine):
    """test_runtime's scripted engine (characters are tokens, 0 = stop), with each turn's reply
    fixed at its prefill and the logits at a position the reply's next character there, so a
    draft is right exactly where it matches the reply. Counts passes and checks the cache."""

    def __init__(self, replies: list[str], can_verify: bool = True) -> None:
        super().__init__(replies)
        self.can_verify, self.start = can_verify, 0
        self.passes = {"prefill": 0, "step": 0, "verify": 0}

    def _logits(self, position: int) -> np.ndarray:
        """After the token at `position`: the reply's character at that offset (stop after)."""
        offset = position + 1 - self.start
        logits = np.zeros(0x3000, dtype=np.float32)
        logits[ord(self.reply[offset]) if offset < len(self.reply) else 0] = 1.0
        return logits

    def prefill(self, ids, start, extra) -> np.ndarray:
        assert self.cache == start
        self.passes["prefill"] += 1
        self.cache, self.start, self.reply = len(ids), len(ids), self.replies.pop(0)
        return self._logits(len(ids) - 1)

    def step(self, token: int, position: int) -> np.ndarray:
        assert self.cache == position, (self.cache, position)
        self.passes["step"] += 1
        self.cache += 1
        return self._logits(position)

    def verify(self, tokens: list[int], position: int) -> np.ndarray | None:
        if not self.can_verify:
            return None
        assert self.cache == position, (self.cache, position)
        self.passes["verify"] += 1
        self.cache += len(tokens)
        return np.stack([self._logits(position + i) for i in range(len(tokens))])


REPLIES = [
    "Step 1: I read the width as 3.\nStep 2: I read the height as 4.\nFinal answer: 12",
    "Step 1: I read the width as 5.\nStep 2: I read the height as 6.\nFinal answer: 30",
    "Step 1: I read the width as 2.\nStep 2: I read the height as 7.\nFinal answer: 14",
]


def _turns(engine: Engine, drafter: NgramDrafter | None, budget: int = 200) -> list:
    outs = []
    for index in range(len(REPLIES)):
        conversation = Conversation(
            engine, drafter=drafter, draft_tokens=8 if drafter is not None else 0
        )
        outs.append(
            conversation.turn([{"role": "user", "content": f"q{index}"}], None, None, budget)
        )
    return outs


def test_drafts_give_greedy_text_in_fewer_passes():
    plain_engine, fast_engine = PositionEngine(REPLIES), PositionEngine(REPLIES)
    plain, fast = _turns(plain_engine, None), _turns(fast_engine, NgramDrafter())
    assert [o.raw_text for o in fast] == [o.raw_text for o in plain] == REPLIES
    assert [o.completion_tokens for o in fast] == [o.completion_tokens for o in plain]
    assert [o.stop_reason for o in fast] == ["stop"] * 3
    # the first reply has nothing to learn from; the later ones reuse its shape
    assert fast[0].drafted_tokens == 0 and fast[2].accepted_tokens > 20
    passes = fast_engine.passes["step"] + fast_engine.passes["verify"]
    plain_passes = plain_engine.passes["step"]
    accepted = sum(o.accepted_tokens for o in fast)
    assert passes == plain_passes - accepted and passes < 0.75 * plain_passes
    assert all(o.accepted_tokens <= o.drafted_tokens for o in fast)


def test_the_budget_and_a_stop_inside_a_draft_end_the_reply_exactly():
    for budget in (1, 2, 9, 40, 57):
        plain = _turns(PositionEngine(REPLIES), None, budget)
        fast = _turns(PositionEngine(REPLIES), NgramDrafter(), budget)
        assert [o.raw_text for o in fast] == [o.raw_text for o in plain], budget
        assert [o.completion_tokens for o in fast] == [o.completion_tokens for o in plain]
        assert all(o.completion_tokens <= budget for o in fast)
    # the same reply twice: the draft runs through the end, and its stop token ends the reply
    engine = PositionEngine(["ab cd ab cd ab cd"] * 3)
    drafter = NgramDrafter()
    drafter.observe([ord(c) for c in "ab cd ab cd ab cd"] + [0])
    drafter.observe([ord(c) for c in "ab cd ab cd ab cd"] + [0])
    outs = [Conversation(engine, drafter=drafter, draft_tokens=8).turn(
        [{"role": "user", "content": "q"}], None, None, 100) for _ in range(3)]  # fmt: skip
    assert [o.raw_text for o in outs] == ["ab cd ab cd ab cd"] * 3
    assert all(o.stop_reason == "stop" for o in outs)


def test_a_backend_without_verify_steps_one_token_at_a_time():
    engine = PositionEngine(REPLIES, can_verify=False)
    outs = _turns(engine, NgramDrafter())
    assert [o.raw_text for o in outs] == REPLIES
    assert engine.passes["verify"] == 0 and sum(o.drafted_tokens for o in outs) == 0


def test_sampling_does_not_speculate():
    engine = PositionEngine(REPLIES)
    engine.temperature = 0.7
    conversation = Conversation(engine, drafter=NgramDrafter(), draft_tokens=8)
    assert conversation.drafter is None


# ---------------------------------------------------------------- real backends
@pytest.mark.parametrize(
    "backend, model",
    [("torch", "tiny:llama"), ("torch", "tiny:smolvlm"), ("torch", "tiny:qwen2vl"),
     ("llama.cpp", "tiny:llama"), ("llama.cpp", "tiny:smolvlm"), ("llama.cpp", "tiny:qwen2vl"),
     ("onnxruntime", "tiny:llama"), ("onnxruntime", "tiny:smolvlm")],
)  # fmt: skip
def test_real_backends_keep_greedy_text_and_accept_drafts(backend: str, model: str):
    engine = open_engine(backend, model)
    try:
        texts, accepted = {}, 0
        for draft_tokens in (0, 8):
            cascade = Cascade(engine, max_new_tokens=48, draft_tokens=draft_tokens)
            texts[draft_tokens] = []
            for seed in range(4):
                image = image_for(model, seed)
                question = f"What is the area of rectangle {seed}?"
                result = cascade.solve(image, question, caption=CAPTION, answer="12")
                texts[draft_tokens].append([s.text for s in result.stages])
                accepted += sum(s.accepted_tokens for s in result.stages) if draft_tokens else 0
                assert all(s.drafted_tokens == 0 for s in result.stages) or draft_tokens
        assert texts[8] == texts[0]
        assert accepted > 0, "no draft token was ever kept"
    finally:
        engine.close()


def test_stage2_continues_on_the_cache_speculation_left():
    # after a speculative stage 1 the cache holds exactly the conversation so far: stage 2
    # prefills only its own turn and its text equals a fresh (no reuse) conversation's
    engine = open_engine("llama.cpp", "tiny:llama")
    try:
        drafter = NgramDrafter()
        for _ in range(2):
            first = stage1_messages(PROBLEM)
            conversation = Conversation(engine, drafter=drafter, draft_tokens=8)
            out1 = conversation.turn(first, None, CAPTION, 48)
            second = [*first, assistant(out1.raw_text), *stage2_messages()]
            out2 = conversation.turn(second, None, CAPTION, 24)
        fresh = Conversation(engine, kv_reuse=False)
        fresh.turn(first, None, CAPTION, 48)
        again = fresh.turn(second, None, CAPTION, 24)
        assert out2.reused_tokens > 0 and out2.raw_text == again.raw_text
        assert out1.accepted_tokens + out2.accepted_tokens > 0
    finally:
        engine.close()
