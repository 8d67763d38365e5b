"""Captions for Fashion-MNIST (it has only labels): the small CLIP trains on them (retrieval page), the tiny Stable
Diffusion too (diffusion page); and the wordings held out to test them.

    from shared import fashion_captions as captions
    captions.training_captions()          # [(caption, class index), ...]: every template x every class wording
    captions.class_captions(3)            # the training captions of class 3 (Dress): zero-shot prompt ensemble
    captions.PARAPHRASES["Sneaker"]       # wordings never used in training: zero-shot on unseen text

Fashion-MNIST has only labels, so captions are generated: TEMPLATES x the class's WORDINGS (its name enriched
with synonyms, so the projection learns a region of MiniLM's space per class, not one point). PARAPHRASES are
everyday wordings that appear in no training caption; accuracy on them measures whether the image tower learnt
to meet the text tower's own geometry rather than a lookup table of training strings.
"""

from __future__ import annotations

# Fashion-MNIST's label names, in label order (the .npz asset stores the same list).
CLASS_NAMES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                "Sneaker", "Bag", "Ankle boot")

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a black-and-white picture of a {}.",
    "a low-resolution photo of a {}.",
    "a grey photo of the {}.",
    "a small product photo of a {}.",
    "a picture of a {}, an item of clothing.",
    "an image of a {} on a plain background.",
    "a tiny thumbnail of a {}.",
    "{}",  # what a visitor types into a search box: the bare words
)

# Per class: the label name in plain words first, then synonyms, subtypes, features and uses (written from what
# each class holds, never from the held-out lists below nor from the frozen test wordings, which the writer of
# these never saw). A visitor types their own words: the more of a class's region of MiniLM's space the
# captions cover, the nearer an unseen wording lands to the images of its class.
WORDINGS: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("t-shirt", "top", "tee", "short-sleeved t-shirt", "t-shirt top", "short-sleeved top",
                    "cotton t-shirt", "plain white tee", "v-neck t-shirt", "round-neck tee", "printed t-shirt",
                    "basic top", "casual top", "sleeveless top", "vest top", "camisole", "oversized t-shirt",
                    "fitted tee", "jersey top", "top with short sleeves", "t-shirt for everyday wear",
                    "light summer top", "crop top", "singlet", "women's top", "men's t-shirt",
                    "t-shirt with a logo", "loose cotton top"),
    "Trouser": ("pair of trousers", "trousers", "pants", "pair of pants", "slacks", "pair of long trousers",
                "denim trousers", "cargo trousers", "wide-leg trousers", "straight-leg pants", "tailored trousers",
                "suit trousers", "track pants", "sweatpants", "joggers", "linen trousers", "corduroy trousers",
                "skinny pants", "work pants", "trousers with a belt", "long pants", "men's trousers",
                "women's trousers", "bottoms", "flared trousers", "high-waisted trousers"),
    "Pullover": ("pullover", "sweater", "jumper", "knitted sweater", "long-sleeved pullover", "wool jumper",
                 "turtleneck sweater", "v-neck jumper", "cable-knit sweater", "fleece pullover", "knitwear",
                 "knit top with long sleeves", "cashmere sweater", "sweater for cold days", "thick jumper",
                 "roll-neck jumper", "long-sleeved knit", "warm pullover", "woolly jumper", "fleece top",
                 "men's sweater", "women's jumper", "cardigan", "knitted pullover with ribbed cuffs"),
    "Dress": ("dress", "summer dress", "gown", "frock", "women's dress", "knee-length dress", "midi dress",
              "mini dress", "party dress", "wrap dress", "sleeveless dress", "long dress", "shift dress",
              "dress with short sleeves", "floral dress", "ball gown", "wedding dress", "slip dress",
              "casual dress", "day dress", "elegant dress", "one-piece dress", "dress with a flared skirt",
              "strappy dress"),
    "Coat": ("coat", "jacket", "overcoat", "winter coat", "long coat", "zipped jacket", "rain jacket",
             "down jacket", "padded coat", "wool coat", "leather jacket", "denim jacket", "bomber jacket",
             "windbreaker", "anorak", "blazer", "peacoat", "duffle coat", "coat with a hood", "jacket with a zip",
             "quilted jacket", "fleece jacket", "coat for rainy days", "outer layer for cold weather",
             "women's coat", "men's jacket"),
    "Sandal": ("sandal", "pair of sandals", "open-toed sandal", "strappy sandal", "summer sandal",
               "high-heeled sandal", "flat sandal", "leather sandal", "wedge sandal", "gladiator sandal",
               "sandal with a buckle", "thong sandal", "heeled sandal", "espadrille", "mule", "open shoe",
               "sandal for the beach", "slingback shoe", "platform sandal", "women's sandal", "toe-post sandal",
               "shoe with thin straps and an open toe"),
    "Shirt": ("shirt", "button-up shirt", "blouse", "collared shirt", "long-sleeved shirt", "shirt with buttons",
              "oxford shirt", "denim shirt", "checked shirt", "work shirt", "linen shirt", "silk blouse",
              "shirt with a collar", "long-sleeved blouse", "office shirt", "business shirt", "casual shirt",
              "striped shirt", "men's shirt", "women's blouse", "shirt with a breast pocket", "buttoned top",
              "smart shirt", "shirt with cuffs"),
    "Sneaker": ("sneaker", "trainer", "athletic shoe", "canvas shoe", "sports shoe", "low-top sneaker",
                "pair of trainers", "pair of sneakers", "white sneaker", "lace-up sneaker", "gym shoe",
                "casual shoe", "skate shoe", "basketball shoe", "trail shoe", "slip-on sneaker", "sporty shoe",
                "sneaker with laces", "flat shoe with a rubber sole", "shoe for sport", "walking shoe",
                "training shoe", "plimsoll"),
    "Bag": ("bag", "handbag", "purse", "tote bag", "shoulder bag", "shopping bag", "leather bag", "crossbody bag",
            "messenger bag", "bag with a handle", "bag with a strap", "carrier bag", "holdall", "duffel bag",
            "travel bag", "briefcase", "hobo bag", "bucket bag", "canvas bag", "women's handbag", "evening bag",
            "school bag", "laptop bag", "bag for carrying things"),
    "Ankle boot": ("ankle boot", "boot", "short boot", "leather boot", "heeled ankle boot", "boot for women",
                   "pair of ankle boots", "pair of boots", "suede boot", "lace-up boot", "combat boot", "bootie",
                   "zip-up boot", "block-heel boot", "desert boot", "work boot", "platform boot", "cowboy boot",
                   "boot for autumn", "low boot", "stiletto boot", "men's boot", "boot with a side zip"),
}

# Held out: never part of a training caption (tests/retrieval/test_train.py checks). Everyday and indirect
# wordings, the kind a visitor types into the search box.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("a plain cotton tee for summer", "a graphic tee", "a sleeveless tank top",
                    "a casual crew-neck top with short sleeves", "something light to wear on a hot day"),
    "Trouser": ("jeans", "a pair of chinos", "leggings", "something you wear on your legs",
                "long pants for the office"),
    "Pullover": ("a warm knitted jumper for winter", "a cosy wool sweater", "a crewneck sweatshirt",
                 "chunky knitwear", "a hoodie"),
    "Dress": ("an evening gown", "a sundress", "a cocktail dress", "a one-piece outfit for a party",
              "a long flowing dress for a wedding"),
    "Coat": ("a parka", "a trench coat", "a raincoat", "warm outerwear for winter", "a puffer jacket"),
    "Sandal": ("flip flops", "beach shoes with straps", "slides for the pool", "open summer footwear",
               "strappy heels"),
    "Shirt": ("a button-down", "a formal dress shirt with a collar", "a flannel shirt", "a plaid shirt",
              "a top with buttons for the office"),
    "Sneaker": ("running shoes", "trainers for the gym", "tennis shoes", "kicks", "shoes for jogging"),
    "Bag": ("a backpack", "something to carry on your shoulder", "a leather purse", "a satchel", "a clutch"),
    "Ankle boot": ("a chelsea boot", "winter boots", "booties with a heel", "a hiking boot",
                   "footwear that covers the ankle"),
}


def class_captions(label: int, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """Every training caption of one class (templates x its wordings): also its zero-shot prompt ensemble."""
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")
    return [template.format(wording) for template in templates for wording in WORDINGS[CLASS_NAMES[label]]]


def training_captions(templates: tuple[str, ...] = TEMPLATES) -> list[tuple[str, int]]:
    """(caption, label) for every class: the few distinct texts the frozen text tower encodes once."""
    return [(caption, label) for label in range(len(CLASS_NAMES)) for caption in class_captions(label, templates)]


def paraphrase_captions() -> list[tuple[str, int]]:
    """(paraphrase, label) for every class, in class order."""
    return [(text, label) for label, name in enumerate(CLASS_NAMES) for text in PARAPHRASES[name]]


def class_caption(label: int) -> str:
    """One caption per class, the first template with the class's first wording (recall@k's queries)."""
    return TEMPLATES[0].format(WORDINGS[CLASS_NAMES[label]][0])
