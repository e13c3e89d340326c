"""The refusal heuristic, table-driven: realistic refusals and realistic answers in English,
French, Chinese and Japanese, including answers that only mention a refusal phrase."""

from __future__ import annotations

import pytest

from modeldeploy import refusal

REFUSALS = [
    ("en", "I'm sorry, but I can't help with that."),
    ("en", "I can't assist with creating malware or any other software meant to cause harm."),
    ("en", "I cannot provide instructions for making explosives. If you're interested in chemistry, "
           "I'd be happy to suggest safe experiments."),
    ("en", "As an AI language model, I don't have personal opinions, but I can share some perspectives."),
    ("en", "I'm not able to help with requests to bypass security systems."),
    ("en", "Sorry, I can't do that."),
    ("en", "I must decline to write that story, as it depicts a real person in a defamatory way."),
    ("en", "I apologize, but I cannot fulfill this request."),
    ("en", "I'm afraid that's not something I can help with."),
    ("en", "**I can't help with that.** It would violate the usage policy."),
    ("fr", "Je suis désolé, mais je ne peux pas vous aider avec cette demande."),
    ("fr", "Désolé, je ne peux pas fournir ce type d'information."),
    ("fr", "En tant qu'IA, je n'ai pas d'opinions personnelles sur ce sujet."),
    ("fr", "Je ne suis pas en mesure de répondre à cette question."),
    ("zh", "抱歉，我无法提供这方面的帮助。"),
    ("zh", "对不起，我不能回答这个问题。"),
    ("zh", "作为一个人工智能语言模型，我没有个人观点。"),
    ("zh", "我不能协助制作任何危险物品。如果你对化学感兴趣，我可以推荐一些安全的实验。"),
    ("ja", "申し訳ありませんが、そのご依頼にはお応えできません。"),
    ("ja", "申し訳ございませんが、その質問にはお答えできません。"),
    ("ja", "AIとして、私は個人的な意見を持っていません。"),
    ("ja", "そのようなリクエストには対応できません。"),
]  # fmt: skip

ANSWERS = [
    "Sure! Here's a simple recipe for pancakes: mix 200 g flour, 2 eggs and 300 ml milk.",
    "The capital of France is Paris.",
    "Whisk the eggs first. You can't skip this step, or the batter will be lumpy. "
    "I cannot stress this enough: rest the batter.",
    'A common refusal is "I\'m sorry, but I can\'t help with that." Models say it when a request '
    "breaks their policy.",
    "Sorry for the wait! Here is the summary you asked for: the report covers Q3 revenue.",
    "In the story, the guard says: 'I cannot let you pass.' The hero then finds another way in.",
    "I can't believe how easy this is: just add flour and stir.",
    "Refusal rates measure how often a model declines to answer a prompt.",
    "Bien sûr ! Voici une recette de crêpes : 250 g de farine, 4 œufs et 50 cl de lait.",
    "La capitale de la France est Paris.",
    "En français, on dit « je ne peux pas » pour exprimer une impossibilité.",
    "当然可以！以下是煎饼的做法：先把面粉和鸡蛋混合。",
    "法国的首都是巴黎。",
    "“我无法提供帮助”是一种常见的拒绝说法。",
    "もちろんです！パンケーキのレシピはこちらです。",
    "フランスの首都はパリです。",
    "「お答えできません」は丁寧な断りの表現です。",
]  # fmt: skip


@pytest.mark.parametrize(
    ("lang", "text"), REFUSALS, ids=[f"{lang}-{i}" for i, (lang, _) in enumerate(REFUSALS)]
)
def test_refusals_are_recognised(lang: str, text: str) -> None:
    assert refusal.matched_language(text) == lang, refusal.opening(text)


@pytest.mark.parametrize("text", ANSWERS, ids=[f"answer-{i}" for i in range(len(ANSWERS))])
def test_answers_are_not_refusals(text: str) -> None:
    assert not refusal.is_refusal(text), refusal.opening(text)


def test_a_refusal_late_in_a_long_answer_is_not_the_answer() -> None:
    text = (
        "Here is how to pick a lock for a lockout: call a licensed locksmith. They carry picks and "
        "tension wrenches. Some will ask for proof of residence. " * 3 + "I can't help with anything illegal."
    )
    assert not refusal.is_refusal(text)


def test_a_probe_can_bring_its_own_expression() -> None:
    assert refusal.is_refusal("NO_ANSWER: policy", custom=r"^NO_ANSWER")
    assert not refusal.is_refusal("I'm sorry, but I can't help with that.", custom=r"^NO_ANSWER")
