"""Lesson 09's study: what held. Every tip of the course, the claim of its lesson that tests it, and this run's
verdict read from the lessons' records, turned into a rule of thumb whose wording follows the verdict. Trains
nothing: it reads `<lesson>.json` records (`core.results.load_results`)."""
from __future__ import annotations

import re

import pandas as pd

from ..core.results import claim_kind, describe

__all__ = ["COURSE_TIPS", "what_held", "held_markdown", "held_view", "decided_share"]

# One row per (tip, claim): the lesson, a pattern its claim's text starts with, the rule the tip gives (imperative),
# what to do instead where the run refuted it, and the reference. The patterns are checked against the records:
# a tip whose lesson ran but whose claim is missing is an error (`what_held`), so a renamed claim cannot go unseen.
_LI_2017 = ("Li et al. 2017, Pruning filters for efficient ConvNets", "https://arxiv.org/abs/1608.08710")   # 4 tips

COURSE_TIPS = (
    dict(tip="Reuse a published model", lesson="01_reuse_pretrained", claim=r"Pretrained weights start far ahead",
         rule="Start from ImageNet weights, not from random ones",
         instead="Here random weights kept up: check the pretrained weights and their preprocessing",
         ref=("Yosinski et al. 2014, How transferable are features in deep neural networks?",
              "https://arxiv.org/abs/1411.1792")),
    dict(tip="Choose a model by its compute", lesson="01_reuse_pretrained", claim=r"Compute \(FLOPs\), not parameter",
         rule="Compare models by FLOPs and measured latency, not by parameter count",
         instead="Here parameter count ranked latency as well: measure latency on your own hardware",
         ref=("Canziani et al. 2016, An analysis of deep neural network models for practical applications",
              "https://arxiv.org/abs/1605.07678")),
    dict(tip="Little data: train only the head", lesson="02_transfer_learning",
         claim=r"With little data, training only the head",
         rule="With a few dozen labelled images per class, freeze the body and train only the new head",
         instead="Here training more layers did as well or better with little data: try a deeper regime too",
         ref=("Yosinski et al. 2014, How transferable are features in deep neural networks?",
              "https://arxiv.org/abs/1411.1792")),
    dict(tip="Moderate data: freeze to the middle", lesson="02_transfer_learning",
         claim=r"With a moderate amount of data, freezing to the middle",
         rule="With a few hundred labelled images, freeze the first half of the body and train the rest",
         instead="Here freezing to the middle was not the best at this size: compare it with head-only and the whole "
                 "network on your tune images",
         ref=("Yosinski et al. 2014, How transferable are features in deep neural networks?",
              "https://arxiv.org/abs/1411.1792")),
    dict(tip="Plenty of data: train the whole network", lesson="02_transfer_learning",
         claim=r"With plenty of data, training the whole network",
         rule="With thousands of labelled images, fine-tune the whole network",
         instead="Here the whole network did not beat the frozen regimes at this budget: train longer or at a larger "
                 "image size before unfreezing everything",
         ref=("Kornblith et al. 2019, Do better ImageNet models transfer better?",
              "https://arxiv.org/abs/1805.08974")),
    dict(tip="Freeze less with more data", lesson="02_transfer_learning", claim=r"Freeze fewer layers the more data",
         rule="The more labelled data you have, the more layers to train",
         instead="Here training more layers did not gain more with more data: try head-only first",
         ref=("Yosinski et al. 2014, How transferable are features in deep neural networks?",
              "https://arxiv.org/abs/1411.1792")),
    dict(tip="Data, data, data", lesson="02_transfer_learning", claim=r"More labelled data gives a better model",
         rule="Label more data: it keeps paying",
         instead="Here more data did not help at this budget: check the labels and the training budget first",
         ref=("Sun et al. 2017, Revisiting unreasonable effectiveness of data in deep learning era",
              "https://arxiv.org/abs/1707.02968")),
    dict(tip="Hand-engineering matters with little data", lesson="02_transfer_learning",
         claim=r"With less data hand-engineered features compete better",
         rule="With very little data, a hand-crafted baseline is worth trying",
         instead="Here hand-crafted features fell further behind with less data: start from pretrained features",
         ref=("Deitsch et al. 2019, Automatic classification of defective photovoltaic module cells in "
              "electroluminescence images", "https://arxiv.org/abs/1807.02894")),
    dict(tip="Use the framework's recipe", lesson="02_transfer_learning", claim=r"fastai's fine_tune matches or beats",
         rule="Use fastai's fine_tune before hand-tuning a freezing schedule",
         instead="Here a manual freezing regime chosen on the tune cells did better than fine_tune",
         ref=("Howard & Ruder 2018, Universal language model fine-tuning for text classification",
              "https://arxiv.org/abs/1801.06146")),
    dict(tip="Augment the training images", lesson="03_augmentation", claim=r"Augmentation helps \(mean",
         rule="Augment the training images",
         instead="Here augmentation cost accuracy at this budget: pick transforms that keep the label",
         ref=("Krizhevsky et al. 2012, ImageNet classification with deep convolutional neural networks",
              "https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks")),
    dict(tip="Augment most when data is small", lesson="03_augmentation",
         claim=r"Augmentation helps more when data is small",
         rule="Augment hardest when data is scarce",
         instead="Here augmentation helped less with little data than with more",
         ref=("Shorten & Khoshgoftaar 2019, A survey on image data augmentation for deep learning",
              "https://doi.org/10.1186/s40537-019-0197-0")),
    dict(tip="Not too strong", lesson="03_augmentation", claim=r"Too strong augmentation hurts",
         rule="Keep augmentation near its published strengths",
         instead="Here stronger augmentation did no harm",
         ref=("Cubuk et al. 2020, RandAugment", "https://arxiv.org/abs/1909.13719")),
    dict(tip="Shift brightness and contrast for a new camera", lesson="03_augmentation",
         claim=r"Brightness/contrast augmentation makes a model robust",
         rule="Add random brightness and contrast when the camera may change",
         instead="Here lighting augmentation did not prepare the model for a new camera: collect images from it",
         ref=("Wu et al. 2015, Deep Image: scaling up image recognition", "https://arxiv.org/abs/1501.02876")),
    dict(tip="A crop can mislabel", lesson="03_augmentation", claim=r"A random crop can cut the defect away",
         rule="Keep random crops large when the object is small or near the edge",
         instead="Here even small crops kept the defect: crop scale was not the risk",
         ref=("Szegedy et al. 2015, Going deeper with convolutions", "https://arxiv.org/abs/1409.4842")),
    dict(tip="Weight the classes", lesson="04_imbalanced_data",
         claim=r"Under a 1:20 imbalance, class weights \(inverse\)",
         rule="Under a strong imbalance, weight the loss by inverse class frequency",
         instead="Here inverse class weights did worse than the plain loss",
         ref=("Buda et al. 2018, A systematic study of the class imbalance problem in CNNs",
              "https://arxiv.org/abs/1710.05381")),
    dict(tip="Weight by the effective number", lesson="04_imbalanced_data",
         claim=r"Under a 1:20 imbalance, class weights \(effective number\)",
         rule="Or weight by the effective number of samples",
         instead="Here effective-number weights did worse than the plain loss",
         ref=("Cui et al. 2019, Class-balanced loss based on effective number of samples",
              "https://arxiv.org/abs/1901.05555")),
    dict(tip="Over-sample the rare class", lesson="04_imbalanced_data", claim=r"Under a 1:20 imbalance, over-sampling",
         rule="Over-sample the rare class",
         instead="Here over-sampling did worse than the plain head",
         ref=("Buda et al. 2018, A systematic study of the class imbalance problem in CNNs",
              "https://arxiv.org/abs/1710.05381")),
    dict(tip="Under-sample the common class", lesson="04_imbalanced_data",
         claim=r"Under a 1:20 imbalance, under-sampling",
         rule="Under-sample the common class",
         instead="Do not under-sample a small dataset: it throws away the cells the model needs",
         ref=("Buda et al. 2018, A systematic study of the class imbalance problem in CNNs",
              "https://arxiv.org/abs/1710.05381")),
    dict(tip="Move the threshold", lesson="04_imbalanced_data", claim=r"Under a 1:20 imbalance, threshold moving",
         rule="Move the decision threshold, chosen on held-out cells",
         instead="Here a moved threshold did worse than the plain decision",
         ref=("Buda et al. 2018, A systematic study of the class imbalance problem in CNNs",
              "https://arxiv.org/abs/1710.05381")),
    dict(tip="Focal loss", lesson="04_imbalanced_data", claim=r"Under a 1:20 imbalance, focal loss",
         rule="Try focal loss for a rare class",
         instead="Here focal loss did worse than the plain loss",
         ref=("Lin et al. 2017, Focal loss for dense object detection", "https://arxiv.org/abs/1708.02002")),
    dict(tip="Logit adjustment", lesson="04_imbalanced_data", claim=r"Under a 1:20 imbalance, logit adjustment",
         rule="Adjust the logits by the class prior",
         instead="Here logit adjustment did worse than the plain loss",
         ref=("Menon et al. 2021, Long-tail learning via logit adjustment", "https://arxiv.org/abs/2007.07314")),
    dict(tip="Over-sample small data", lesson="04_imbalanced_data", claim=r"With little data .*over-sampling beats",
         rule="With little data, over-sample rather than under-sample",
         instead="Here under-sampling did better even with little data",
         ref=("Buda et al. 2018, A systematic study of the class imbalance problem in CNNs",
              "https://arxiv.org/abs/1710.05381")),
    dict(tip="Under-sample large data", lesson="04_imbalanced_data", claim=r"With plenty of data .*under-sampling",
         rule="With plenty of data, under-sampling the common class is as good as over-sampling the rare one",
         instead="Even with every cell, under-sampling cost accuracy: at this scale, over-sample",
         ref=("Buda et al. 2018, A systematic study of the class imbalance problem in CNNs",
              "https://arxiv.org/abs/1710.05381")),
    dict(tip="Adaptive optimizers converge faster", lesson="05_optimizers", claim=r"Adaptive converges faster",
         rule="For a quick first result, use an adaptive optimizer (Adam): its loss falls in fewer steps",
         instead="Here SGD with momentum, at its tuned rate, reached the loss target in fewer steps than Adam",
         ref=("Kingma & Ba 2015, Adam: a method for stochastic optimization", "https://arxiv.org/abs/1412.6980")),
    dict(tip="Adam is insensitive to its learning rate", lesson="05_optimizers",
         claim=r"Adam is less sensitive to its learning rate",
         rule="When you cannot tune, use Adam: a wide range of its learning rates works",
         instead="Here SGD with momentum tolerated the wider range of learning rates",
         ref=("Wilson et al. 2017, The marginal value of adaptive gradient methods in machine learning",
              "https://arxiv.org/abs/1705.08292")),
    dict(tip="SGD relies on its initialisation", lesson="05_optimizers", claim=r"SGD relies more on its initialisation",
         rule="With SGD, keep the standard initialisation (or BatchNorm's): a badly scaled start costs it more",
         instead="Here a badly scaled start cost Adam more than SGD",
         ref=("Sutskever et al. 2013, On the importance of initialization and momentum in deep learning",
              "https://proceedings.mlr.press/v28/sutskever13.html")),
    dict(tip="SGD ends better", lesson="05_optimizers", claim=r"SGD with momentum reaches a better final result",
         rule="For the last point, train with SGD and momentum, each optimizer at its own tuned rate",
         instead="Here Adam ended better than SGD",
         ref=("Wilson et al. 2017, The marginal value of adaptive gradient methods in machine learning",
              "https://arxiv.org/abs/1705.08292")),
    dict(tip="Decay the learning rate", lesson="05_optimizers", claim=r"Decaying the learning rate helps SGD",
         rule="Decay SGD's learning rate (cosine)",
         instead="Here a constant rate did better than cosine decay",
         ref=("Loshchilov & Hutter 2017, SGDR: stochastic gradient descent with warm restarts",
              "https://arxiv.org/abs/1608.03983")),
    dict(tip="Switch from Adam to SGD", lesson="05_optimizers", claim=r"Adam -> SGD ends better than Adam alone",
         rule="Start with Adam and switch to SGD",
         instead="Here switching to SGD did worse than staying with Adam",
         ref=("Keskar & Socher 2017, Improving generalization performance by switching from Adam to SGD",
              "https://arxiv.org/abs/1712.07628")),
    dict(tip="Ensemble", lesson="06_ensembles", claim=r"An ensemble of \d+ beats its average member",
         rule="Average several networks for a point more, at several times the prediction cost",
         instead="Here the ensemble gained less than a point: the prediction cost bought little",
         ref=("Lakshminarayanan et al. 2017, Simple and scalable predictive uncertainty estimation using deep "
              "ensembles", "https://arxiv.org/abs/1612.01474")),
    dict(tip="Ensemble members that differ", lesson="06_ensembles", claim=r"Members that differ more make a better",
         rule="Build an ensemble from different architectures, not only seeds",
         instead="Here seeds of one body combined better than different bodies",
         ref=("Hansen & Salamon 1990, Neural network ensembles", "https://doi.org/10.1109/34.58871")),
    dict(tip="Snapshot ensembles", lesson="06_ensembles", claim=r"A snapshot ensemble beats its last snapshot",
         rule="Take a snapshot ensemble along one cyclic run",
         instead="Here the snapshots pulled the last one down",
         ref=("Huang et al. 2017, Snapshot ensembles: train 1, get M for free", "https://arxiv.org/abs/1704.00109")),
    dict(tip="Multi-crop at test time", lesson="06_ensembles", claim=r"The 10-crop average beats the single centre",
         rule="Average the 10-crop at test time",
         instead="Here the 10-crop did worse than the centre crop: crops cut away the cells' borders",
         ref=("Simonyan & Zisserman 2015, Very deep convolutional networks for large-scale image recognition",
              "https://arxiv.org/abs/1409.1556")),
    dict(tip="Prune for deployment", lesson="07_pruning", claim=r"\.\.\. for at most one point of balanced accuracy",
         rule="Prune filters and fine-tune: fewer FLOPs for little accuracy",
         instead="Here pruning cost more than a point of balanced accuracy",
         ref=_LI_2017),
    dict(tip="Prune iteratively", lesson="07_pruning", claim=r"Iterative pruning beats one-shot",
         rule="Prune in several steps, fine-tuning after each",
         instead="Here one-shot pruning did better than iterative pruning",
         ref=_LI_2017),
    dict(tip="Rank filters before pruning", lesson="07_pruning",
         claim=r"Ranking filters by L1 norm beats pruning random",
         rule="Rank the filters by the L1 norm of their weights before you prune, rather than pick them at random",
         instead="Here pruning random filters did better than the L1 ranking after the same fine-tuning",
         ref=_LI_2017),
    dict(tip="Rank filters by L2 norm", lesson="07_pruning", claim=r"Ranking by L2 norm prunes better than by L1",
         rule="Rank the filters by the L2 norm of their weights rather than the L1 norm",
         instead="Here the L2 norm pruned worse than the L1 norm: keep L1",
         ref=_LI_2017),
    dict(tip="Rank filters by mean activation", lesson="07_pruning",
         claim=r"Ranking by mean activation prunes better than by L1",
         rule="Rank the filters by their mean activation on held-out images rather than by their weights' L1 norm",
         instead="Here mean activation pruned worse than the L1 norm, which needs no images",
         ref=("Molchanov et al. 2017, Pruning convolutional neural networks for resource efficient inference",
              "https://arxiv.org/abs/1611.06440")),
    dict(tip="Rank filters by APoZ", lesson="07_pruning", claim=r"Ranking by APoZ prunes better than by L1",
         rule="Rank the filters by APoZ (their share of zero activations on held-out images) rather than by their "
              "weights' L1 norm",
         instead="Here APoZ pruned worse than the L1 norm, which needs no images",
         ref=("Hu et al. 2016, Network trimming: a data-driven neuron pruning approach towards efficient deep "
              "architectures", "https://arxiv.org/abs/1607.03250")),
    dict(tip="Residual networks tolerate removal", lesson="07_pruning", claim=r"Removing a block hurts a plain network",
         rule="Choose an architecture with shortcuts if you will remove layers",
         instead="Here removing a block hurt the residual network as much",
         ref=("Veit et al. 2016, Residual networks behave like ensembles of relatively shallow networks",
              "https://arxiv.org/abs/1605.06431")),
    dict(tip="The whole recipe", lesson="08_capstone", claim=r"The recipe matches or beats the paper's CNN",
         rule="The course's recipe reaches the published CNN on ELPV",
         instead="Here the recipe fell short of the paper's CNN",
         ref=("Deitsch et al. 2019, Automatic classification of defective photovoltaic module cells in "
              "electroluminescence images", "https://arxiv.org/abs/1807.02894")),
)

def _find(claims: list, pattern: str) -> dict | None:
    hits = [c for c in claims if re.match(pattern, c["claim"])]
    return hits[0] if hits else None


def what_held(records: list, tips=COURSE_TIPS) -> pd.DataFrame:
    """One row per tip of `tips`: its lesson, the claim that tests it as this run's records state it (`records`:
    `load_results()`), verdict, effect, interval, half-width, kind, profile, the rule and the reference; 'not run'
    where the lesson left no record. Raises ValueError naming the tip when its lesson ran but no claim matches
    (a claim renamed in its lesson must be renamed here)."""
    by_lesson = {r["lesson"]: r for r in records}
    rows = []
    for t in tips:
        rec = by_lesson.get(t["lesson"])
        c = _find(rec.get("claims", []), t["claim"]) if rec else None
        if rec and c is None:
            raise ValueError(f"tip {t['tip']!r}: no claim of {t['lesson']} starts with {t['claim']!r}; the lesson's "
                             f"claims are: {[x['claim'] for x in rec.get('claims', [])]}")
        base = dict(tip=t["tip"], lesson=t["lesson"], rule=t["rule"], instead=t["instead"], ref=t["ref"][0],
                    url=t["ref"][1])
        if c is None:
            rows.append(dict(base, claim="", verdict="not run", effect=float("nan"), ci_low=float("nan"),
                             ci_high=float("nan"), half_width=float("nan"), kind="", profile="", said=""))
            continue
        rows.append(dict(base, claim=c["claim"], verdict=c["verdict"], effect=c["effect"],
                         ci_low=c["ci"][0], ci_high=c["ci"][1], half_width=c.get("half_width"),
                         kind=c.get("kind") or claim_kind(c), profile=rec["profile"]["name"], said=describe(c)))
    return pd.DataFrame(rows)


def _lowered(text: str) -> str:
    return text[:1].lower() + text[1:]   # mid-sentence, acronyms (SGD, FLOPs) kept


def _rule_sentence(row) -> str:
    """The rule of thumb as this run's verdict allows it to be said."""
    if row["verdict"] == "supported":
        return f"**{row['rule']}.** Held in this run: {row['said']}."
    if row["verdict"] == "refuted":
        return f"**{row['instead']}.** The tip ({_lowered(row['rule'])}) did not hold: {row['said']}."
    if row["verdict"] == "inconclusive":
        return f"*Unsettled:* {_lowered(row['rule'])} — this run could not tell: {row['said']}."
    if row["verdict"] == "undecided":
        return f"*Not decided* in the {row['profile']} profile ({row['said']}); run the cpu or gpu profile."
    return f"*Not measured:* lesson {row['lesson'][:2]} left no record in this run."


def held_markdown(table: pd.DataFrame) -> str:
    """The course's rules of thumb as markdown, one bullet per tip under its lesson, each worded by its verdict
    (`what_held` rows) and linked to its reference."""
    lines = []
    for lesson, g in table.groupby("lesson", sort=False):
        lines.append(f"\n**Lesson {lesson[:2]}** ({lesson[3:].replace('_', ' ')})")
        lines += [f"- {r['tip']}: {_rule_sentence(r)} [{r['ref']}]({r['url']})" for _, r in g.iterrows()]
    return "\n".join(lines).strip()


def held_view(table: pd.DataFrame, verdict: str = "all", lesson: str = "all") -> pd.DataFrame:
    """The widget's callback: the rows of a `what_held` table with `verdict` and from `lesson` ('all': every one),
    the columns a reader compares."""
    rows = table
    if verdict != "all":
        rows = rows[rows["verdict"] == verdict]
    if lesson != "all":
        rows = rows[rows["lesson"] == lesson]
    return rows[["lesson", "tip", "verdict", "effect", "ci_low", "ci_high", "half_width"]].reset_index(drop=True)


def decided_share(table: pd.DataFrame) -> tuple:
    """(k, n): of the tips whose lesson left a record (n), how many this run decided (k: supported or refuted; a
    profile that decides nothing decides none)."""
    judged = table[table["verdict"] != "not run"]
    return int(judged["verdict"].isin(["supported", "refuted"]).sum()), len(judged)
