"""Raw generation -> clean caption, or a rejection with a reason code.

Cleaning strips boilerplate openings ("The video shows ...") and wrapping
quotes/markdown; rejection catches what must not reach training: empty or
near-empty text, repetition loops (a phrase repeated back to back, or a long
text with few distinct trigrams), and structured answers that do not parse.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pyratok.pipelines.caption.config import PostprocessConfig, PromptConfig

_WORD = re.compile(r"[\w']+", re.UNICODE)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")
_LEADING_PUNCT = re.compile(r"^[\s,:;.\-–—]+")


@dataclass
class Cleaned:
    caption: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class Rejected:
    reason: str
    """Ledger code: empty_output, too_short, repetition_loop, unparseable_fields."""
    detail: str


class Postprocessor:
    def __init__(self, cfg: PostprocessConfig, prompt: PromptConfig):
        self.cfg = cfg
        self.prompt = prompt
        self._openings = [re.compile(rf"^\s*(?:{p})\b", re.IGNORECASE) for p in cfg.strip_openings]

    def __call__(self, text: str) -> Cleaned | Rejected:
        text = (text or "").strip()
        if not text:
            return Rejected("empty_output", "the model generated no text")
        fields: dict[str, str] = {}
        if self.prompt.template == "structured":
            parsed = parse_fields(text, self.prompt.fields)
            if parsed is None or not parsed.get(self.prompt.caption_field, "").strip():
                return Rejected("unparseable_fields", f"no {self.prompt.caption_field!r} field in: {text[:200]!r}")
            fields = {k: self.strip(v) for k, v in parsed.items()}
            text = fields[self.prompt.caption_field]
        else:
            text = self.strip(text)
        if not text:
            return Rejected("empty_output", "nothing left after stripping boilerplate")
        loop = repetition(text, self.cfg)
        if loop:
            return Rejected("repetition_loop", loop)
        words = _WORD.findall(text)
        if len(words) < self.cfg.min_words:
            return Rejected("too_short", f"{len(words)} words (< {self.cfg.min_words}): {text!r}")
        return Cleaned(text, fields)

    def strip(self, text: str) -> str:
        """Remove wrapping quotes/markdown and boilerplate openings; capitalise what remains."""
        text = _CONTROL.sub("", text)
        text = re.sub(r"\s+", " ", _FENCE.sub("", text.strip())).strip().strip('"“”').strip()
        text = re.sub(r"^(?:\*\*)?(?:caption|description)(?:\*\*)?\s*:\s*", "", text, flags=re.IGNORECASE)
        for _ in range(2):  # "Sure, here is the caption: The video shows ..." needs two passes
            for pattern in self._openings:
                stripped = pattern.sub("", text, count=1)
                if stripped != text:
                    text = _LEADING_PUNCT.sub("", stripped).lstrip()
                    if text.lower().startswith("that "):
                        text = text[5:]
                    break
        text = text.strip()
        return text[:1].upper() + text[1:] if text else text


def repetition(text: str, cfg: PostprocessConfig) -> str | None:
    """A description of the repetition loop in ``text``, or None."""
    words = [w.lower() for w in _WORD.findall(text)]
    for n in range(1, min(cfg.max_ngram, len(words) // cfg.max_repeats) + 1):
        # Single words legitimately repeat ("very very"), so they need a longer run.
        needed = cfg.max_repeats + 2 if n == 1 else cfg.max_repeats
        for start in range(0, len(words) - n * needed + 1):
            phrase = words[start : start + n]
            run = 1
            pos = start + n
            while words[pos : pos + n] == phrase:
                run += 1
                pos += n
            if run >= needed:
                return f"{' '.join(phrase)!r} repeated {run} times in a row"
    if len(words) >= 30:
        grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
        ratio = len(set(grams)) / len(grams)
        if ratio < cfg.min_distinct_ratio:
            return f"only {ratio:.0%} distinct word trigrams"
    return None


def parse_fields(text: str, fields: list[str]) -> dict[str, str] | None:
    """Structured output: a JSON object (possibly fenced or with text around it), else ``Field: value`` lines."""
    body = _FENCE.sub("", text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start >= 0 and end > start:
        try:
            data = json.loads(body[start : end + 1])
            if isinstance(data, dict):
                wanted = {f.lower(): f for f in fields}
                return {wanted[k.lower()]: str(v) for k, v in data.items() if k.lower() in wanted and v is not None}
        except json.JSONDecodeError:
            pass
    found: dict[str, str] = {}
    names = "|".join(re.escape(f) for f in fields)
    for match in re.finditer(rf"^\W*({names})\W*:\s*(.+)$", body, flags=re.IGNORECASE | re.MULTILINE):
        canonical = next(f for f in fields if f.lower() == match.group(1).lower())
        found[canonical] = match.group(2).strip()
    return found or None
