"""Species catalogue for the demo database: real AgIR names, USDA/EPPO codes, taxonomy, display colours,
and how the image painter draws each one (leaf style and greens), so species differ by appearance."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Species:
    class_id: int
    common_name: str  # lower case, as category_common_name
    usda: str
    eppo: str
    group: str  # crop role: weed | cover crop | cash crop
    klass: str
    subclass: str
    order: str
    family: str
    genus: str
    species: str
    authority: str
    growth_habit: str
    duration: str
    hex: str  # display colour (category_hex), also the mask palette colour
    weight: float  # share of rows (stats doc counts)
    median_cm2: float  # median estimated bbox area (stats doc)
    style: str  # painter: grass | broad | lobed | trifoliate | vine | rosette
    leaf_rgb: tuple[int, int, int]  # base leaf colour (sRGB)
    red_stems: bool = False

    @property
    def rgb_text(self) -> str:
        h = self.hex.lstrip("#")
        return ", ".join(str(int(h[i : i + 2], 16)) for i in (0, 2, 4))

    @property
    def usda_link(self) -> str:
        return f"https://plants.usda.gov/home/plantProfile?symbol={self.usda}"


LILIOPSIDA = ("Liliopsida", "Commelinidae", "Cyperales")
SPECIES: tuple[Species, ...] = (
    Species(1, "barley", "HOVU", "HORVX", "cover crop", *LILIOPSIDA, "Poaceae", "Hordeum", "vulgare", "L.",
            "graminoid", "annual", "#d66edd", 6847, 1089, "grass", (150, 178, 72)),
    Species(2, "palmer amaranth", "AMPA", "AMAPA", "weed", "Magnoliopsida", "Caryophyllidae", "Caryophyllales",
            "Amaranthaceae", "Amaranthus", "palmeri", "S. Watson", "forb/herb", "annual", "#e6194b", 5293, 134,
            "broad", (58, 112, 38), True),
    Species(3, "hairy vetch", "VIVI", "VICVI", "cover crop", "Magnoliopsida", "Rosidae", "Fabales", "Fabaceae",
            "Vicia", "villosa", "Roth", "forb/herb vine", "annual, biennial", "#4363d8", 4156, 724, "vine",
            (72, 118, 66)),
    Species(4, "cereal rye", "SECE", "SECCE", "cover crop", *LILIOPSIDA, "Poaceae", "Secale", "cereale", "L.",
            "graminoid", "annual, biennial", "#f58231", 3784, 1234, "grass", (104, 146, 98)),
    Species(5, "upland cotton", "GOHI", "GOSHI", "cash crop", "Magnoliopsida", "Dilleniidae", "Malvales",
            "Malvaceae", "Gossypium", "hirsutum", "L.", "shrub", "annual, perennial", "#911eb4", 2918, 1892,
            "lobed", (78, 136, 48)),
    Species(6, "crimson clover", "TRIN3", "TRFIN", "cover crop", "Magnoliopsida", "Rosidae", "Fabales", "Fabaceae",
            "Trifolium", "incarnatum", "L.", "forb/herb", "annual", "#46f0f0", 2534, 398, "trifoliate",
            (88, 150, 64)),
    Species(7, "soybean", "GLMA4", "GLXMA", "cash crop", "Magnoliopsida", "Rosidae", "Fabales", "Fabaceae",
            "Glycine", "max", "(L.) Merr.", "forb/herb", "annual", "#bcf60c", 1189, 1234, "trifoliate",
            (96, 140, 40)),
    Species(8, "horseweed", "ERCA20", "ERICA", "weed", "Magnoliopsida", "Asteridae", "Asterales", "Asteraceae",
            "Erigeron", "canadensis", "L.", "forb/herb", "annual, biennial", "#008080", 892, 278, "rosette",
            (112, 148, 74)),
)
BY_NAME = {s.common_name: s for s in SPECIES}
