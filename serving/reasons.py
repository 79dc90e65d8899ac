"""Turn per-member LightGBM contributions into plain bilingual reasons for ops.

Every registry feature has a phrase pair: one for a high value and one for a low value
(e.g. `recency_days` low -> "最近刚购买 / recent purchase"). Whether a member's value is
"high" is judged against the population being ranked (at or above its median rank).
Categorical features have one template filled with the member's value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phrase:
    """Bilingual phrases for one feature: `high`/`low` for numbers, `template` (with {value}) for categories."""

    high: str = ""
    low: str = ""
    template: str = ""
    missing: str = ""

    def for_value(self, value: object, is_high: bool) -> str:
        """The phrase for one member's value (`is_high` as judged against the population)."""
        is_missing = value is None or bool(pd.isna(value))
        if self.template:
            return self.template.format(value="未知/unknown" if is_missing else str(value))
        if is_missing and self.missing:
            return self.missing
        return self.high if is_high else self.low


def _pair(zh_high: str, en_high: str, zh_low: str, en_low: str, *, missing: tuple[str, str] | None = None) -> Phrase:
    return Phrase(
        high=f"{zh_high} / {en_high}",
        low=f"{zh_low} / {en_low}",
        missing=f"{missing[0]} / {missing[1]}" if missing else "",
    )


def _category(zh: str, en: str) -> Phrase:
    return Phrase(template=f"{zh}：{{value}} / {en}: {{value}}")


_WINDOW_ZH = {30: "近30天", 90: "近90天", 180: "近180天", 365: "近一年"}
_WINDOW_EN = {30: "in the last 30 days", 90: "in the last 90 days", 180: "in the last 180 days", 365: "in the last year"}

_EVENT_WORDS: dict[str, tuple[str, str]] = {
    "campaign_join": ("参与种草活动", "seeding-campaign sign-ups"),
    "trial_apply": ("申请试用", "trial applications"),
    "trial_feedback": ("提交试用反馈", "trial feedback delivered"),
    "group_message": ("社群发言", "community group messages"),
    "checkin": ("签到", "check-ins"),
    "survey": ("参与问卷", "surveys answered"),
    "content_like": ("点赞品牌内容", "likes on brand content"),
    "content_comment": ("评论品牌内容", "comments on brand content"),
    "share": ("分享品牌内容", "shares of brand content"),
    "referral_invite": ("邀请好友", "friend invitations"),
    "other": ("其他互动", "other engagement"),
}

_PLATFORM_WORDS: dict[str, tuple[str, str]] = {
    "xhs": ("小红书", "Xiaohongshu"),
    "douyin": ("抖音", "Douyin"),
    "weibo": ("微博", "Weibo"),
    "wechat": ("微信", "WeChat"),
    "other": ("其他平台", "other platforms"),
}


def _build_phrases() -> dict[str, Phrase]:
    phrases: dict[str, Phrase] = {
        "recency_days": _pair("很久没有购买", "no purchase for a long time", "最近刚购买", "recent purchase",
                              missing=("尚无购买", "no purchases yet")),
        "orders_total": _pair("累计订单多", "many orders overall", "累计订单少", "few orders overall"),
        "spend_total": _pair("累计消费高", "high total spend", "累计消费低", "low total spend"),
        "avg_order_value": _pair("客单价高", "high average order value", "客单价低", "low average order value",
                                 missing=("尚无订单", "no orders yet")),
        "categories_bought_365d": _pair("近一年购买品类多", "many categories bought in the last year",
                                        "近一年购买品类少", "few categories bought in the last year"),
        "repeat_category_share": _pair("常回购同一品类", "often rebuys the same categories",
                                       "很少回购同一品类", "rarely rebuys the same categories",
                                       missing=("尚无购买", "no purchases yet")),
        "purchase_interval_mean_days": _pair("购买间隔较长", "long gaps between purchases",
                                             "购买频繁", "buys often",
                                             missing=("购买不足两次", "fewer than two purchases")),
        "spend_trend_90d": _pair("近90天消费上升", "spend rising over the last 90 days",
                                 "近90天消费下降", "spend falling over the last 90 days",
                                 missing=("近半年无消费", "no spend in the last 180 days")),
        "tenure_days": _pair("入会时间长", "long-standing member", "新入会会员", "recently joined member"),
        "active_months_12m": _pair("近一年活跃月份多", "active in many months of the last year",
                                   "近一年活跃月份少", "active in few months of the last year"),
        "campaigns_joined": _pair("参与品牌活动多", "joined many brand campaigns",
                                  "参与品牌活动少", "joined few brand campaigns"),
        "campaign_join_months": _pair("多次参与种草活动", "repeat campaign participant",
                                      "很少参与种草活动", "rarely joins campaigns"),
        "events_90d": _pair("近90天私域互动多", "very engaged in the last 90 days",
                            "近90天私域互动少", "little engagement in the last 90 days"),
        "active_days_90d": _pair("近90天活跃天数多", "active on many days in the last 90 days",
                                 "近90天活跃天数少", "active on few days in the last 90 days"),
        "days_since_last_event": _pair("很久没有互动", "no engagement for a long time",
                                       "最近有互动", "engaged recently",
                                       missing=("尚无私域互动", "no engagement yet")),
        "posts_total": _pair("累计发布笔记多", "many posts about the brand", "累计发布笔记少", "few posts about the brand"),
        "post_interactions_mean_180d": _pair("近180天笔记平均互动高", "high average interactions on posts in the last 180 days",
                                             "近180天笔记平均互动低", "low average interactions on posts in the last 180 days",
                                             missing=("近180天无已满7天的笔记", "no matured posts in the last 180 days")),
        "post_interactions_median_180d": _pair("近180天笔记互动稳定较高", "consistently high interactions on posts in the last 180 days",
                                               "近180天笔记互动普遍较低", "typically low interactions on posts in the last 180 days",
                                               missing=("近180天无已满7天的笔记", "no matured posts in the last 180 days")),
        "post_interactions_mean_total": _pair("笔记平均互动高", "high average interactions on posts",
                                              "笔记平均互动低", "low average interactions on posts",
                                              missing=("尚无已满7天的笔记", "no matured posts yet")),
        "post_interactions_median_total": _pair("笔记互动稳定较高", "consistently high interactions on posts",
                                                "笔记互动普遍较低", "typically low interactions on posts",
                                                missing=("尚无已满7天的笔记", "no matured posts yet")),
        "post_interactions_max_total": _pair("有爆款笔记", "has a hit post", "笔记最高互动低", "best post had few interactions",
                                             missing=("尚无已满7天的笔记", "no matured posts yet")),
        "platforms_posted": _pair("多平台发布内容", "posts on several platforms", "发布平台少", "posts on few platforms"),
        "campaign_posts_total": _pair("活动笔记多", "many campaign posts", "活动笔记少", "few campaign posts"),
        "trials_applied": _pair("申请试用多", "applied for many trials", "申请试用少", "applied for few trials"),
        "trial_feedbacks": _pair("试用反馈多", "delivered many trial reviews", "试用反馈少", "delivered few trial reviews"),
        "trial_feedback_ratio": _pair("试用反馈完成率高", "reliably delivers trial feedback",
                                      "试用反馈完成率低", "often skips trial feedback",
                                      missing=("尚未申请试用", "has not applied for a trial")),
        "shares_total": _pair("经常分享品牌内容", "often shares brand content", "很少分享品牌内容", "rarely shares brand content"),
        "referral_invites_total": _pair("经常邀请好友", "often invites friends", "很少邀请好友", "rarely invites friends"),
        "referrals_sent": _pair("推荐好友多", "many referrals sent", "推荐好友少", "few referrals sent"),
        "referees_joined": _pair("推荐的好友入会多", "many referred friends joined", "推荐的好友入会少", "few referred friends joined"),
        "referees_ordered": _pair("推荐的好友下单多", "many referred friends bought", "推荐的好友下单少", "few referred friends bought"),
        "referral_reach_2hop": _pair("二度传播广", "wide second-degree referral reach", "二度传播有限", "little second-degree referral reach"),
        "followers_total": _pair("社交粉丝多", "large social following", "社交粉丝少", "small social following"),
        "times_invited": _pair("曾多次被邀请", "invited several times before", "很少被邀请", "rarely invited before"),
        "times_declined": _pair("曾多次婉拒邀请", "declined invitations before", "没有婉拒过邀请", "has not declined invitations"),
        "times_enrolled": _pair("曾加入KOC计划", "was a KOC before", "从未加入KOC计划", "never a KOC before"),
        "times_eliminated": _pair("曾被淘汰", "was removed from the programme before", "从未被淘汰", "never removed from the programme"),
        "times_upgraded": _pair("曾升级为重要KOC", "was promoted to productive KOC before", "从未升级", "never promoted"),
        "days_since_last_invitation": _pair("距上次邀请已久", "long since the last invitation",
                                            "最近被邀请过", "invited recently",
                                            missing=("从未被邀请", "never invited before")),
        "age": _pair("年龄偏大", "older member", "年龄偏小", "younger member", missing=("年龄未知", "age unknown")),
        "gender": _category("性别", "gender"),
        "city_tier": _category("城市等级", "city tier"),
        "channel": _category("获客渠道", "acquisition channel"),
    }
    for days in (30, 90, 365):
        zh, en = _WINDOW_ZH[days], _WINDOW_EN[days]
        phrases[f"orders_{days}d"] = _pair(f"{zh}购买频繁", f"frequent orders {en}", f"{zh}购买少", f"few orders {en}")
        phrases[f"spend_{days}d"] = _pair(f"{zh}消费高", f"high spend {en}", f"{zh}消费低", f"low spend {en}")
    for days in (30, 90):
        zh, en = _WINDOW_ZH[days], _WINDOW_EN[days]
        for event_type, (zh_word, en_word) in _EVENT_WORDS.items():
            phrases[f"events_{event_type}_{days}d"] = _pair(
                f"{zh}{zh_word}多", f"many {en_word} {en}", f"{zh}{zh_word}少", f"few {en_word} {en}"
            )
    for days in (30, 90, 180):
        zh, en = _WINDOW_ZH[days], _WINDOW_EN[days]
        phrases[f"posts_{days}d"] = _pair(f"{zh}发布笔记多", f"many posts {en}", f"{zh}发布笔记少", f"few posts {en}")
    for platform, (zh_word, en_word) in _PLATFORM_WORDS.items():
        phrases[f"followers_{platform}"] = _pair(
            f"{zh_word}粉丝多", f"many {en_word} followers", f"{zh_word}粉丝少", f"few {en_word} followers"
        )
    return phrases


PHRASES: dict[str, Phrase] = _build_phrases()

def missing_phrases(feature_names: Iterable[str]) -> list[str]:
    """Feature names without a phrase (should be empty for the registry)."""
    return [name for name in feature_names if name not in PHRASES]


def _fallback(name: str) -> Phrase:
    readable = name.replace("_", " ")
    return Phrase(high=f"{readable} 较高 / high {readable}", low=f"{readable} 较低 / low {readable}")


Population = Mapping[str, np.ndarray]
"""Sorted non-missing values per numeric feature: the population high/low is judged against."""


def sorted_population(reference: pd.DataFrame, numeric_columns: Iterable[str]) -> dict[str, np.ndarray]:
    """Precompute a `Population` once so explaining a few members later stays cheap."""
    return {name: np.sort(reference[name].dropna().to_numpy(dtype="float64")) for name in numeric_columns}


def high_value_mask(
    values: pd.DataFrame, numeric_columns: Iterable[str], reference: pd.DataFrame | Population | None = None
) -> pd.DataFrame:
    """True where a value ranks in the upper half of the `reference` population (default: `values`).

    Uses the average percentile rank within the reference (strictly above one half), so ties
    such as a majority of zeros fall on the low side; missing values count as low.
    """
    numeric_columns = list(numeric_columns)
    reference = values if reference is None else reference
    populations = sorted_population(reference, numeric_columns) if isinstance(reference, pd.DataFrame) else reference
    out = {}
    for name in numeric_columns:
        population = populations[name]
        column = values[name].to_numpy(dtype="float64", na_value=np.nan)
        if len(population) == 0:
            out[name] = np.zeros(len(column), dtype=bool)
            continue
        below = np.searchsorted(population, column, side="left")
        up_to = np.searchsorted(population, column, side="right")
        average_rank = below + (up_to - below + 1) / 2.0  # as if the value were one of the ties
        out[name] = ~np.isnan(column) & (average_rank / len(population) > 0.5)
    return pd.DataFrame(out, index=values.index)


_WINDOW_SUFFIX = re.compile(r"_(?:30|90|180|365)d$")


def reason_concept(feature: str) -> str:
    """Features that differ only by their look-back window say the same thing to ops
    (`events_campaign_join_30d` and `_90d`): one reason per concept."""
    return _WINDOW_SUFFIX.sub("", feature)


def _strongest_distinct(contrib: np.ndarray, concepts: Sequence[str], n: int) -> np.ndarray:
    """Per row, the column positions of the `n` largest contributions, one per concept."""
    order = np.argsort(-contrib, axis=1, kind="stable")
    codes = pd.factorize(pd.Series(concepts))[0][order]
    repeat = np.zeros(order.shape, dtype=bool)
    for j in range(1, order.shape[1]):
        repeat[:, j] = (codes[:, :j] == codes[:, [j]]).any(axis=1)
    # stable sort puts each row's first-of-concept positions first, in contribution order
    keep_first = np.argsort(repeat, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(order, keep_first, axis=1)


def top_reasons(
    contributions: pd.DataFrame,
    values: pd.DataFrame,
    n_reasons: int = 3,
    *,
    categorical: Iterable[str] = (),
    phrases: Mapping[str, Phrase] | None = None,
    reference: pd.DataFrame | Population | None = None,
) -> pd.DataFrame:
    """The `n_reasons` strongest positive contributions of each row as phrases, one per
    concept (a feature's 30- and 90-day versions count once, at the stronger one).

    `contributions` and `values` share index and feature columns (extra columns such as a
    bias term are ignored). Returns `reason_1..reason_n` and `reason_feature_1..n`;
    a slot is empty ("") when the member has fewer positive contributions.
    Ties in contribution are broken by feature order. High/low is judged against `reference`
    (the population being ranked; default: `values` itself).
    """
    phrases = PHRASES if phrases is None else phrases
    features = [c for c in contributions.columns if c in values.columns]
    categorical = [c for c in categorical if c in features]
    unknown = missing_phrases(features) if phrases is PHRASES else [f for f in features if f not in phrases]
    if unknown:
        logger.warning("no reason phrase for features %s; using a generic phrase", unknown)
    table = {name: phrases.get(name) or _fallback(name) for name in features}

    contrib = contributions[features].to_numpy(dtype="float64")
    numeric = [c for c in features if c not in categorical]
    high = high_value_mask(values, numeric, reference) if numeric else pd.DataFrame(index=values.index)
    order = _strongest_distinct(contrib, [reason_concept(f) for f in features], n_reasons)
    n_rows = len(contributions)
    out: dict[str, object] = {}
    row_index = np.arange(n_rows)
    for slot in range(n_reasons):
        feature_pos = order[:, slot] if slot < order.shape[1] else np.zeros(n_rows, dtype=int)
        positive = contrib[row_index, feature_pos] > 0 if slot < order.shape[1] else np.zeros(n_rows, dtype=bool)
        texts = np.full(n_rows, "", dtype=object)
        names = np.full(n_rows, "", dtype=object)
        for pos in np.unique(feature_pos[positive]):
            name = features[int(pos)]
            rows = np.flatnonzero(positive & (feature_pos == pos))
            phrase = table[name]
            names[rows] = name
            if name in categorical:
                column_values = values[name].to_numpy(dtype=object)
                texts[rows] = [phrase.for_value(column_values[r], True) for r in rows]
            else:
                is_high = high[name].to_numpy(dtype=bool)[rows]
                is_missing = values[name].isna().to_numpy()[rows]
                chosen = np.where(is_high, phrase.high or _fallback(name).high, phrase.low or _fallback(name).low)
                texts[rows] = np.where(is_missing & bool(phrase.missing), phrase.missing, chosen)
        out[f"reason_{slot + 1}"] = texts
        out[f"reason_feature_{slot + 1}"] = names
    ordered_columns = [f"reason_{i + 1}" for i in range(n_reasons)] + [f"reason_feature_{i + 1}" for i in range(n_reasons)]
    return pd.DataFrame(out, index=contributions.index)[ordered_columns].astype("str")
