"""Exercise checks: each returns True/False and prints a helpful message; `None` means not answered yet."""
from __future__ import annotations

from .data import elpv_frame

__all__ = ["check_valid_defectives", "check_poly_defect_rate"]


def _verdict(answer, correct: bool, hint: str, praise: str) -> bool:
    if answer is None:
        print(f"Not answered yet. Hint: {hint}")
        return False
    print(f"Correct! {praise}" if correct else f"Not quite ({answer!r}). Hint: {hint}")
    return correct


def check_valid_defectives(answer) -> bool:
    """Lesson 00: the number of defective cells (prob >= 0.5) in the validation split."""
    df = elpv_frame()
    truth = int((df["is_valid"] & df["defective"]).sum())
    return _verdict(answer, answer is not None and int(answer) == truth,
                    "filter elpv_frame() on both 'is_valid' and 'defective', then count rows (len or .sum()).",
                    f"{truth} of {int(df['is_valid'].sum())} validation cells are defective.")


def check_poly_defect_rate(answer) -> bool:
    """Lesson 00: the fraction (0..1) of polycrystalline cells that are defective, within 0.005."""
    df = elpv_frame()
    truth = float(df.loc[df["type"] == "poly", "defective"].mean())
    ok = answer is not None and abs(float(answer) - truth) < 0.005
    return _verdict(answer, ok, "select rows with type == 'poly' and take the mean of the boolean 'defective' column "
                    "(a fraction between 0 and 1, not a percentage).", f"{truth:.1%} of poly cells are defective.")
