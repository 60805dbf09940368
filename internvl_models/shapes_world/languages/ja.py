"""Japanese lexicon and templates.

Grammar notes: colour words are attributive forms that precede the noun ("赤い星", "緑の円"); size adjectives
come first ("大きな赤い星"); existence is "…があります", location "…に"; counting uses the native counter
つ ("3つ").
"""

from __future__ import annotations

import random

from ..content import Mention
from .base import Frame, Language, pick

COLOURS = {  # attributive forms
    "red": ("赤い", "赤色の"),
    "orange": ("オレンジ色の", "橙色の"),
    "yellow": ("黄色い", "黄色の"),
    "green": ("緑の", "緑色の"),
    "blue": ("青い", "青色の"),
    "purple": ("紫の", "紫色の"),
    "pink": ("ピンクの", "ピンク色の"),
    "black": ("黒い", "黒色の"),
}
NOUNS = {
    "circle": ("円", "丸"),
    "square": ("正方形", "四角形"),
    "triangle": ("三角形",),
    "star": ("星",),
    "cross": ("十字", "十字形"),
    "hexagon": ("六角形",),
    "diamond": ("ひし形",),
    None: ("図形", "物体"),
    "object": ("物体", "図形"),
}
SIZES = {"small": ("小さな", "小さい"), "large": ("大きな", "大きい")}
POSITIONS = {
    "top_left": ("左上",),
    "top": ("上", "上部"),
    "top_right": ("右上",),
    "left": ("左", "左側"),
    "center": ("中央", "真ん中"),
    "right": ("右", "右側"),
    "bottom_left": ("左下",),
    "bottom": ("下", "下部"),
    "bottom_right": ("右下",),
}
COUNTS = {1: "1つ", 2: "2つ", 3: "3つ", 4: "4つ"}


class Japanese(Language):
    code = "ja"
    name = "日本語"

    list_frames = (
        Frame("{list}があります。", "{list}があります。", "ni"),
        Frame("{list}が描かれています。", "{list}が描かれています。", "ni"),
        Frame("{list}が写った画像。", "{list}が写った画像。", "no"),
        Frame("図形が{count}ある画像：{list}。", "図形が{count}ある画像：{list}。", "no"),
    )
    items = {"ni": ("{pos}に{bare}",), "no": ("{pos}の{bare}", "{bare}（{pos}）")}
    sentences = ("{pos}に{bare}があります。", "{bare}が{pos}にあります。", "{pos}には{bare}が描かれています。")
    sentence_intros = (Frame("", ""), Frame("図形が{count}あります。", "図形が{count}あります。"))
    sentence_separator = ""
    list_separator = "、"
    list_and = "、"  # locative lists ("左上に赤い星、右に青い円") are joined with 、 throughout
    query_templates = ("{bare}", "{bare}の画像", "{bare}が写った画像", "{bare}の写真")
    classification_templates = ("{bare}の写真。", "{bare}の画像。", "{bare}の絵。", "無地の背景にある{bare}。")
    questions = {
        "colour": ("{def}は何色ですか？", "{def}の色は何ですか？"),
        "shape": ("{def}はどんな形ですか？", "{def}の形は何ですか？"),
        "count": ("{plural}はいくつありますか？", "{plural}は何個ありますか？"),
        "position": ("{def}はどこにありますか？", "{def}は画像のどこにありますか？"),
        "existence": ("{where}{bare_np}はありますか？", "{where}{bare_np}がありますか？"),
        "grounding": (
            "<ref>{bare}</ref>のバウンディングボックスを示してください。",
            "<ref>{bare}</ref>の位置を枠で答えてください。",
        ),
        "multi_image": ("{bare}が写っているのはどの画像ですか？", "どの画像に{bare}がありますか？"),
    }

    colour_answers = {
        "red": ("赤", "赤色", "赤い"),
        "orange": ("オレンジ", "オレンジ色", "橙色", "橙"),
        "yellow": ("黄色", "黄", "黄色い"),
        "green": ("緑", "緑色"),
        "blue": ("青", "青色", "青い"),
        "purple": ("紫", "紫色"),
        "pink": ("ピンク", "ピンク色", "桃色"),
        "black": ("黒", "黒色", "黒い"),
    }
    shape_answers = {
        "circle": ("円", "丸", "円形"),
        "square": ("正方形", "四角", "四角形"),
        "triangle": ("三角形", "三角"),
        "star": ("星", "星形", "星型"),
        "cross": ("十字", "十字形", "十字型", "プラス"),
        "hexagon": ("六角形",),
        "diamond": ("ひし形", "菱形"),
    }
    position_answers = {
        "top_left": ("左上", "左上隅"),
        "top": ("上", "上部", "上側", "中央上"),
        "top_right": ("右上", "右上隅"),
        "left": ("左", "左側", "中央左"),
        "center": ("中央", "真ん中", "中心"),
        "right": ("右", "右側", "中央右"),
        "bottom_left": ("左下", "左下隅"),
        "bottom": ("下", "下部", "下側", "中央下"),
        "bottom_right": ("右下", "右下隅"),
    }
    yes_answers = ("はい", "ある", "あります", "うん")
    no_answers = ("いいえ", "ない", "ありません", "いや")
    number_words = {
        0: ("0", "ゼロ", "ない"),
        1: ("1つ", "一つ", "ひとつ", "1個", "一"),
        2: ("2つ", "二つ", "ふたつ", "2個", "二"),
        3: ("3つ", "三つ", "みっつ", "3個", "三"),
        4: ("4つ", "四つ", "よっつ", "4個", "四"),
    }
    ordinal_words = {
        1: ("1枚目", "一枚目", "最初"),
        2: ("2枚目", "二枚目"),
        3: ("3枚目", "三枚目"),
        4: ("4枚目", "四枚目"),
    }
    answer_suffixes = ("です", "にあります", "にある", "だ", "色です")

    def forms(self, mention: Mention, rng: random.Random | None = None, *, object_noun: bool = False) -> dict[str, str]:
        noun_key = mention.shape if mention.shape or not object_noun else "object"
        parts = []
        if mention.size is not None:
            parts.append(pick(SIZES[mention.size], rng))
        if mention.colour is not None:
            parts.append(pick(COLOURS[mention.colour], rng))
        core = "".join([*parts, pick(NOUNS[noun_key], rng)])
        pos = "" if mention.position is None else pick(POSITIONS[mention.position], rng)
        bare = f"{pos}の{core}" if pos else core
        return {
            "bare": bare,
            "def": bare,
            "plural": bare,  # Japanese nouns do not inflect for number
            "bare_np": core,
            "where": f"{pos}に" if pos else pick(("", "画像に"), rng),
        }

    def position_forms(self, position: str, rng: random.Random | None = None) -> dict[str, str]:
        word = pick(POSITIONS[position], rng)
        return {"pos": word, "pos_short": word}

    def count_forms(self, n: int) -> dict[str, str]:
        return {"count": COUNTS[n]}
