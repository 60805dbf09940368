"""Chinese (simplified) lexicon and templates.

Grammar notes: modifiers precede the noun and take 的 ("左上角的红色星星"); a numeral needs a measure word,
颗 for 星星 and 个 otherwise ("一颗星星", "两个圆形" — 两, not 二, before a measure word).
"""

from __future__ import annotations

import random

from ..content import Mention
from .base import Frame, Language, pick

COLOURS = {  # two-character forms only: "红图形" without 的 is not idiomatic
    "red": ("红色",),
    "orange": ("橙色", "橘色"),
    "yellow": ("黄色",),
    "green": ("绿色",),
    "blue": ("蓝色",),
    "purple": ("紫色",),
    "pink": ("粉色", "粉红色"),
    "black": ("黑色",),
}
NOUNS = {  # (noun, measure word) variants
    "circle": (("圆形", "个"), ("圆", "个")),
    "square": (("正方形", "个"), ("方块", "个")),
    "triangle": (("三角形", "个"),),
    "star": (("星星", "颗"), ("五角星", "个")),
    "cross": (("十字", "个"), ("十字形", "个")),
    "hexagon": (("六边形", "个"),),
    "diamond": (("菱形", "个"),),
    None: (("图形", "个"), ("物体", "个")),
    "object": (("物体", "个"), ("图形", "个")),
}
SIZES = {"small": ("小",), "large": ("大",)}
POSITIONS = {
    "top_left": ("左上角",),
    "top": ("上方", "顶部"),
    "top_right": ("右上角",),
    "left": ("左侧", "左边"),
    "center": ("中间", "中央"),
    "right": ("右侧", "右边"),
    "bottom_left": ("左下角",),
    "bottom": ("下方", "底部"),
    "bottom_right": ("右下角",),
}
NUMERALS = {1: "一", 2: "两", 3: "三", 4: "四"}


class Chinese(Language):
    code = "zh"
    name = "中文"

    list_frames = (
        Frame("图中有{list}。", "图中有{list}。"),
        Frame("这张图片里有{list}。", "这张图片里有{list}。"),
        Frame("图片中共有{count}：{list}。", "图片中共有{count}：{list}。"),
    )
    items = {"default": ("{one}{bare}（{pos_short}）", "{one}位于{pos_short}的{bare}")}
    sentences = ("{pos}有{one}{bare}。", "{one}{bare}在{pos}。", "{pos}是{one}{bare}。")
    sentence_intros = (Frame("", ""), Frame("图中有{count}。", "图中有{count}。"))
    sentence_separator = ""
    query_templates = ("{bare}", "{one}{bare}", "一张有{bare}的图片", "{bare}的图片")
    classification_templates = ("一张{bare}的照片。", "一张有{bare}的图片。", "{bare}的图画。", "纯色背景上的{bare}。")
    questions = {
        "colour": ("{def}是什么颜色？", "{def}是什么颜色的？", "图中{def}的颜色是什么？"),
        "shape": ("{def}是什么形状？", "{def}是什么形状的？"),
        "count": ("图中有几{measure}{plural}？", "一共有多少{measure}{plural}？"),
        "position": ("{def}在哪里？", "{def}在图片的什么位置？"),
        "existence": ("{where}有{bare_np}吗？", "{where}有没有{bare_np}？"),
        "grounding": ("请给出<ref>{bare}</ref>的边界框坐标。", "<ref>{bare}</ref>在哪里？请给出它的边界框。"),
        "multi_image": ("哪张图片里有{bare}？", "{bare}出现在哪张图片中？"),
    }
    list_separator = "、"
    list_and = "和"

    colour_answers = {
        "red": ("红色", "红", "红的", "红色的"),
        "orange": ("橙色", "橙", "橘色", "橘黄色", "橙色的"),
        "yellow": ("黄色", "黄", "黄的", "黄色的"),
        "green": ("绿色", "绿", "绿的", "绿色的"),
        "blue": ("蓝色", "蓝", "蓝的", "蓝色的"),
        "purple": ("紫色", "紫", "紫的", "紫色的"),
        "pink": ("粉色", "粉红色", "粉红", "粉色的"),
        "black": ("黑色", "黑", "黑的", "黑色的"),
    }
    shape_answers = {
        "circle": ("圆形", "圆", "圆圈", "圆的"),
        "square": ("正方形", "方形", "方块", "四方形"),
        "triangle": ("三角形", "三角"),
        "star": ("星星", "星形", "五角星", "星"),
        "cross": ("十字", "十字形", "加号"),
        "hexagon": ("六边形", "六角形"),
        "diamond": ("菱形",),
    }
    position_answers = {
        "top_left": ("左上角", "左上", "左上方"),
        "top": ("上方", "顶部", "上面", "上边", "正上方", "上部"),
        "top_right": ("右上角", "右上", "右上方"),
        "left": ("左侧", "左边", "左面", "左", "左部"),
        "center": ("中间", "中央", "正中间", "中心", "正中"),
        "right": ("右侧", "右边", "右面", "右", "右部"),
        "bottom_left": ("左下角", "左下", "左下方"),
        "bottom": ("下方", "底部", "下面", "下边", "正下方", "下部"),
        "bottom_right": ("右下角", "右下", "右下方"),
    }
    yes_answers = ("有", "是", "是的", "对", "有的")
    no_answers = ("没有", "否", "不是", "不", "没", "无")
    number_words = {0: ("零", "没有"), 1: ("一", "一个"), 2: ("两", "二", "两个"), 3: ("三", "三个"), 4: ("四", "四个")}
    ordinal_words = {1: ("第一", "一"), 2: ("第二", "二"), 3: ("第三", "三"), 4: ("第四", "四")}
    answer_prefixes = ("它是", "是", "在", "位于", "图中有", "有")
    answer_suffixes = ("的", "个", "颗")

    def forms(self, mention: Mention, rng: random.Random | None = None, *, object_noun: bool = False) -> dict[str, str]:
        noun_key = mention.shape if mention.shape or not object_noun else "object"
        noun, measure = NOUNS[noun_key][0] if rng is None else rng.choice(NOUNS[noun_key])
        size = "" if mention.size is None else pick(SIZES[mention.size], rng)
        if mention.colour is None:
            core = size + noun
        else:
            # "红色的星星" and "红色星星" are both natural; 的 is kept when a size word follows ("红色的小星星").
            de = "的" if size or rng is None or rng.random() < 0.6 else ""
            core = pick(COLOURS[mention.colour], rng) + de + size + noun
        pos = "" if mention.position is None else pick(POSITIONS[mention.position], rng)
        bare = f"{pos}的{core}" if pos else core
        return {
            "bare": bare,
            "def": bare,
            "plural": bare,  # Chinese nouns do not inflect for number
            "one": "一" + measure,
            "measure": measure,
            "bare_np": core,
            "where": pos or pick(("图中", "图片里"), rng),
        }

    def position_forms(self, position: str, rng: random.Random | None = None) -> dict[str, str]:
        word = pick(POSITIONS[position], rng)
        return {"pos": word, "pos_short": word}

    def count_forms(self, n: int) -> dict[str, str]:
        return {"count": f"{NUMERALS[n]}个图形"}
