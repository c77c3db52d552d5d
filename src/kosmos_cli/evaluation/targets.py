"""What the model would have to write for a page's ground truth, and whether it fits.

The target is written in the model's own output grammar (`<ocr>`: one
`<bbox><x_a><y_b><x_c><y_d></bbox>text` line per line, in resized-image pixels;
`<md>`: the markdown) and counted with the model's tokenizer, plus the end token.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TargetTooLong
from ..inputs.documents import PageGeometry
from ..parsing import format_ocr_target, resized_size
from .groundtruth import PageTruth

# The prompt before the answer: <s><image>, one position per latent query, </image>, the task token.
PROMPT_EXTRA_POSITIONS = 4


def target_text(truth: PageTruth, geometry: PageGeometry, max_patches: int) -> str:
    """The page's ground truth as the model would write it (without the end token)."""
    if truth.markdown is not None:
        return truth.markdown.strip("\n")
    if not truth.boxes:
        return "".join(f"{text}\n" for text in truth.texts)
    page = (geometry.width, geometry.height)
    return format_ocr_target(truth.lines, resized_size(*page, max_patches), page)


@dataclass(frozen=True)
class TokenBudget:
    """How many tokens a page's answer may take, and why.

    `positions`: what is left of the text model's position table after the prompt;
    `max_new_tokens`: the generation limit of this run.
    """

    positions: int
    max_new_tokens: int

    @classmethod
    def for_model(cls, config, max_new_tokens: int) -> TokenBudget:
        prompt = config.latent_query_num + PROMPT_EXTRA_POSITIONS
        return cls(config.text_config.max_position_embeddings - prompt, max_new_tokens)

    def check(self, tokens: int, where: str) -> None:
        """Raise TargetTooLong when `tokens` (end token included) do not fit; never truncate."""
        if tokens > self.positions:
            raise TargetTooLong(
                f"{where}: its ground truth takes {tokens} tokens, more than the {self.positions} positions "
                "the model has left after the image and prompt; split the page or leave it out"
            )
        if tokens > self.max_new_tokens:
            raise TargetTooLong(
                f"{where}: its ground truth takes {tokens} tokens, more than --max-new-tokens "
                f"{self.max_new_tokens}; raise it"
            )


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of `text` as the model writes it, plus its end token."""
    return len(tokenizer(text, add_special_tokens=False).input_ids) + 1
