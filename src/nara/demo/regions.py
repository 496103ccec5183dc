"""Region shapes the generator can build: municipalities (SCB codes, approximate populations), hospitals.

Names, municipality codes and rounded populations are public facts; organisation numbers and HSA-ids
derived from them here are synthetic (see :func:`nara.fhir.identifiers.make_organisation_number`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Municipality:
    code: str  # SCB kommunkod
    name: str  # e.g. "Örebro"
    population: int  # approximate, rounded
    town: str  # main town (postal town)
    postal_prefix: str  # first three digits of the main town's postal codes
    districts: tuple[str, ...] = ()  # health-centre neighbourhoods in larger towns

    @property
    def municipality_name(self) -> str:
        return f"{self.name} kommun"


@dataclass(frozen=True, slots=True)
class Hospital:
    name: str
    municipality: str  # code
    wards: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RegionConfig:
    key: str
    name: str  # "Region Örebro län"
    county: str  # "Örebro län"
    county_code: str  # two digits
    municipalities: tuple[Municipality, ...]
    hospitals: tuple[Hospital, ...]
    default_patients: int
    monitoring_days: int = 120
    # The benchmark shape keeps every person and unit but a lighter history per person: fewer people in
    # home monitoring (this share of the usual enrolment) and lab samples at one check-up instead of two.
    monitoring_scale: float = 1.0
    lab_checkups: int = 2
    private_provider: str = "Hälsocentralen Norden AB"

    @property
    def population(self) -> int:
        return sum(m.population for m in self.municipalities)


STANDARD_WARDS = ("Medicinavdelning", "Kirurgavdelning")

OREBRO = RegionConfig(
    key="orebro",
    name="Region Örebro län",
    county="Örebro län",
    county_code="18",
    municipalities=(
        Municipality("1814", "Lekeberg", 8_600, "Fjugesta", "716"),
        Municipality("1860", "Laxå", 5_600, "Laxå", "695"),
        Municipality("1861", "Hallsberg", 16_100, "Hallsberg", "694"),
        Municipality("1862", "Degerfors", 9_300, "Degerfors", "693"),
        Municipality("1863", "Hällefors", 6_700, "Hällefors", "712"),
        Municipality("1864", "Ljusnarsberg", 4_800, "Kopparberg", "714"),
        Municipality(
            "1880",
            "Örebro",
            158_000,
            "Örebro",
            "703",
            (
                "Tybble",
                "Varberga",
                "Brickebacken",
                "Baronbackarna",
                "Vivalla",
                "Lillån",
                "Adolfsberg",
                "Mikaelgården",
                "Olaus Petri",
                "Eyrabacken",
                "Hovsta",
                "Haga",
                "Västhaga",
                "Wadköping",
                "Norrmalm",
                "Sörbyängen",
            ),
        ),
        Municipality("1881", "Kumla", 22_500, "Kumla", "692"),
        Municipality("1882", "Askersund", 11_400, "Askersund", "696"),
        Municipality("1883", "Karlskoga", 30_000, "Karlskoga", "691"),
        Municipality("1884", "Nora", 10_600, "Nora", "713"),
        Municipality("1885", "Lindesberg", 23_500, "Lindesberg", "711"),
    ),
    hospitals=(
        Hospital(
            "Universitetssjukhuset Örebro",
            "1880",
            ("Medicinavdelning", "Kardiologavdelning", "Geriatrisk avdelning", "Lungavdelning", "Kirurgavdelning"),
        ),
        Hospital("Karlskoga lasarett", "1883", STANDARD_WARDS),
        Hospital("Lindesbergs lasarett", "1885", ("Medicinavdelning", "Ortopedavdelning")),
    ),
    default_patients=3_000,
)

SKANE = RegionConfig(
    key="skane",
    name="Region Skåne",
    county="Skåne län",
    county_code="12",
    municipalities=(
        Municipality("1214", "Svalöv", 14_600, "Svalöv", "268"),
        Municipality("1230", "Staffanstorp", 26_000, "Staffanstorp", "245"),
        Municipality("1231", "Burlöv", 20_000, "Arlöv", "232"),
        Municipality("1233", "Vellinge", 37_000, "Vellinge", "235"),
        Municipality("1256", "Östra Göinge", 15_000, "Broby", "280"),
        Municipality("1257", "Örkelljunga", 10_500, "Örkelljunga", "286"),
        Municipality("1260", "Bjuv", 16_000, "Bjuv", "267"),
        Municipality("1261", "Kävlinge", 32_500, "Kävlinge", "244"),
        Municipality("1262", "Lomma", 25_500, "Lomma", "234"),
        Municipality("1263", "Svedala", 22_900, "Svedala", "233"),
        Municipality("1264", "Skurup", 17_000, "Skurup", "274"),
        Municipality("1265", "Sjöbo", 19_500, "Sjöbo", "275"),
        Municipality("1266", "Hörby", 16_000, "Hörby", "242"),
        Municipality("1267", "Höör", 17_000, "Höör", "243"),
        Municipality("1270", "Tomelilla", 13_600, "Tomelilla", "273"),
        Municipality("1272", "Bromölla", 12_800, "Bromölla", "295"),
        Municipality("1273", "Osby", 13_300, "Osby", "283"),
        Municipality("1275", "Perstorp", 7_500, "Perstorp", "284"),
        Municipality("1276", "Klippan", 17_900, "Klippan", "264"),
        Municipality("1277", "Åstorp", 16_300, "Åstorp", "265"),
        Municipality("1278", "Båstad", 15_300, "Båstad", "269"),
        Municipality(
            "1280",
            "Malmö",
            357_000,
            "Malmö",
            "214",
            ("Limhamn", "Rosengård", "Husie", "Västra Hamnen", "Möllevången", "Hyllie", "Oxie", "Fosie", "Kirseberg"),
        ),
        Municipality("1281", "Lund", 127_000, "Lund", "224", ("Centrum", "Norra Fäladen", "Linero", "Klostergården")),
        Municipality("1282", "Landskrona", 46_500, "Landskrona", "261"),
        Municipality("1283", "Helsingborg", 151_000, "Helsingborg", "252", ("Centrum", "Drottninghög", "Råå", "Påarp")),
        Municipality("1284", "Höganäs", 27_500, "Höganäs", "263"),
        Municipality("1285", "Eslöv", 34_500, "Eslöv", "241"),
        Municipality("1286", "Ystad", 31_500, "Ystad", "271"),
        Municipality("1287", "Trelleborg", 46_500, "Trelleborg", "231"),
        Municipality("1290", "Kristianstad", 86_500, "Kristianstad", "291"),
        Municipality("1291", "Simrishamn", 19_200, "Simrishamn", "272"),
        Municipality("1292", "Ängelholm", 43_500, "Ängelholm", "262"),
        Municipality("1293", "Hässleholm", 52_500, "Hässleholm", "281"),
    ),
    hospitals=(
        Hospital(
            "Skånes universitetssjukhus Malmö",
            "1280",
            ("Medicinavdelning", "Kardiologavdelning", "Geriatrisk avdelning", "Lungavdelning", "Kirurgavdelning"),
        ),
        Hospital(
            "Skånes universitetssjukhus Lund",
            "1281",
            ("Medicinavdelning", "Kardiologavdelning", "Geriatrisk avdelning", "Lungavdelning", "Kirurgavdelning"),
        ),
        Hospital("Helsingborgs lasarett", "1283", ("Medicinavdelning", "Kardiologavdelning", "Kirurgavdelning")),
        Hospital(
            "Centralsjukhuset Kristianstad", "1290", ("Medicinavdelning", "Geriatrisk avdelning", "Kirurgavdelning")
        ),
        Hospital("Ystads lasarett", "1286", STANDARD_WARDS),
        Hospital("Trelleborgs lasarett", "1287", STANDARD_WARDS),
        Hospital("Landskrona lasarett", "1282", STANDARD_WARDS),
        Hospital("Ängelholms sjukhus", "1292", ("Medicinavdelning",)),
        Hospital("Hässleholms sjukhus", "1293", STANDARD_WARDS),
    ),
    default_patients=1_400_000,
    monitoring_days=60,
    monitoring_scale=0.3,
    lab_checkups=1,
)

REGIONS = {OREBRO.key: OREBRO, SKANE.key: SKANE}

# Share of the population per five-year age band 0-4, 5-9, ..., 95-99, 100+ (Sweden, recent years, rounded)
# and the share of men in each band.
AGE_BANDS = (
    5.4, 5.9, 6.1, 5.9, 5.8, 6.6, 6.9, 6.6, 6.3, 6.3, 6.5, 6.3, 5.7, 5.4, 5.3, 4.6, 3.1, 1.7, 0.8, 0.25, 0.03,
)  # fmt: skip
MALE_SHARE = (
    0.513, 0.514, 0.514, 0.515, 0.520, 0.522, 0.515, 0.510, 0.508, 0.508, 0.506, 0.503, 0.500, 0.494, 0.483,
    0.470, 0.448, 0.410, 0.350, 0.270, 0.180,
)  # fmt: skip
