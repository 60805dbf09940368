"""Chat templates of InternVL 1.1-3 as data, and the one function that renders them (INTERNVL.md D.5).

Every template a released InternVL 1.5/2/2.5/3 checkpoint names is the "MPT" style: the system block, then one
block per message, each closed by `sep`; the open assistant turn is the bare role. `internvl_zh` (InternVL-Chat
V1.1) has its own style. The separators differ between templates that look alike (pitfall F.10): `internvl2_5`
closes a turn with `<|im_end|>\n`, `internlm2-chat` and `Hermes-2` with `<|im_end|>` alone, and that changes the
token ids the model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UnknownModelError

MPT = "mpt"
INTERNVL_ZH = "internvl_zh"

# Verbatim from the official templates (INTERNVL.md D.5). The 2.5 message replaced the older one only in the
# templates introduced with 2.5; the older templates keep theirs so benchmark numbers stay comparable.
SYSTEM_INTERNVL2_5 = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
SYSTEM_INTERNVL2 = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)


@dataclass(frozen=True)
class ChatTemplate:
    """One conversation template. `system_template` holds `{system_message}` where the system message goes."""

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]  # (user, assistant), already carrying their own markup
    sep: str  # closes every message (MPT); closes assistant messages (internvl_zh)
    style: str = MPT
    sep2: str = ""  # internvl_zh only: closes the system block and user messages
    stop_str: str | None = None  # informational: the official chat() stops on `stop_token`, never on this

    @property
    def stop_token(self) -> str:
        """The token generation stops on: the official chat() looks up `sep.strip()` in the tokenizer (D.4)."""
        return self.sep.strip()


_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
_CHATML_SYSTEM = "<|im_start|>system\n{system_message}"

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("internvl2_5", _CHATML_SYSTEM, SYSTEM_INTERNVL2_5, _CHATML_ROLES, "<|im_end|>\n"),
        ChatTemplate("internlm2-chat", _CHATML_SYSTEM, SYSTEM_INTERNVL2, _CHATML_ROLES, "<|im_end|>"),
        ChatTemplate(
            "Hermes-2", _CHATML_SYSTEM, SYSTEM_INTERNVL2, _CHATML_ROLES, "<|im_end|>", stop_str="<|endoftext|>"
        ),
        ChatTemplate(
            "phi3-chat", "<|system|>\n{system_message}", SYSTEM_INTERNVL2, ("<|user|>\n", "<|assistant|>\n"), "<|end|>"
        ),
        ChatTemplate("internvl_zh", "", "", ("<human>", "<bot>"), "</s>", style=INTERNVL_ZH, sep2=" "),
    )
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise UnknownModelError(f"Unknown chat template {name!r}. Available: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def render(template: ChatTemplate, messages: Sequence[str | None], system_message: str | None = None) -> str:
    """The prompt for alternating user / assistant `messages` (user first); a None or empty message is an open
    turn and renders as its bare role, which is how a prompt for generation ends.

    `system_message` replaces the template's own (a checkpoint's `config.system_message`, D.5).
    """
    system = template.system_message if system_message is None else system_message
    if template.style == INTERNVL_ZH:
        # The raw system message (the template string is unused in this style), then "role: message" closed by
        # sep2 after a user turn and sep after an assistant turn.
        out, closers = system + template.sep2, (template.sep2, template.sep)
        for i, message in enumerate(messages):
            role = template.roles[i % 2]
            out += f"{role}: {message}{closers[i % 2]}" if message else f"{role}:"
        return out
    out = template.system_template.format(system_message=system) + template.sep
    for i, message in enumerate(messages):
        role = template.roles[i % 2]
        out += f"{role}{message}{template.sep}" if message else role
    return out


def clean_response(template: ChatTemplate, text: str) -> str:
    """Decoded generation -> the answer: cut at the first stop token, strip whitespace (the official chat())."""
    return text.split(template.stop_token)[0].strip()
