"""Common Swedish given names (by generation), surnames and street names for the synthetic population."""

from __future__ import annotations

SURNAMES = (
    "Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson", "Svensson",
    "Gustafsson", "Pettersson", "Jonsson", "Jansson", "Hansson", "Bengtsson", "Jönsson", "Lindberg", "Jakobsson",
    "Magnusson", "Lindström", "Olofsson", "Lindqvist", "Lindgren", "Berg", "Axelsson", "Bergström", "Lundberg",
    "Lind", "Lundgren", "Lundqvist", "Mattsson", "Berglund", "Fredriksson", "Sandberg", "Henriksson", "Forsberg",
    "Sjöberg", "Ali", "Wallin", "Mohammed", "Engström", "Eklund", "Danielsson", "Lundin", "Håkansson", "Björk",
    "Bergman", "Gunnarsson", "Holm", "Wikström", "Samuelsson", "Isaksson", "Fransson", "Bergqvist", "Nyström",
    "Holmberg", "Arvidsson", "Löfgren", "Söderberg", "Nyberg", "Blomqvist", "Claesson", "Nordström", "Ahmed",
    "Mårtensson", "Lundström", "Hassan", "Viklund", "Björklund", "Eliasson", "Pålsson", "Berggren", "Sandström",
    "Lund", "Nordin", "Ström", "Åberg", "Falk", "Ekström", "Hermansson", "Holmgren", "Hellström", "Dahlberg",
    "Hedlund", "Sundberg", "Sjögren", "Ek", "Blom", "Abrahamsson", "Martinsson", "Öberg", "Andreasson",
    "Strömberg", "Månsson", "Hansen", "Åkesson", "Dahl", "Lindholm", "Norberg", "Holmqvist",
)  # fmt: skip

# Given names by the generation that carried them: (born before 1950, 1950-1979, 1980-2004, 2005 onwards).
FEMALE = (
    ("Margit", "Gunhild", "Elsa", "Ingrid", "Karin", "Anna", "Maj", "Greta", "Astrid", "Dagny", "Sonja", "Ingeborg",
     "Gunvor", "Rut", "Elvi", "Britta", "Ester", "Signe", "Aina", "Ella"),
    ("Birgitta", "Eva", "Kerstin", "Ulla", "Margareta", "Christina", "Lena", "Anna", "Marie", "Annika", "Inger",
     "Gunilla", "Elisabeth", "Monica", "Agneta", "Susanne", "Carina", "Helena", "Karin", "Maria"),
    ("Sara", "Emma", "Johanna", "Hanna", "Sofia", "Lina", "Ida", "Frida", "Amanda", "Malin", "Jenny", "Elin", "Linnea",
     "Josefin", "Matilda", "Caroline", "Emelie", "Therese", "Anna", "Maria"),
    ("Alice", "Maja", "Elsa", "Astrid", "Wilma", "Freja", "Olivia", "Selma", "Ebba", "Agnes", "Alva", "Saga", "Ella",
     "Vera", "Alma", "Stella", "Ellen", "Signe", "Klara", "Lilly"),
)  # fmt: skip
MALE = (
    ("Karl", "Erik", "Nils", "Gunnar", "Sven", "Bertil", "Gösta", "Åke", "Olof", "Lennart", "Arne", "Ragnar", "Harry",
     "Sture", "Folke", "Tage", "Ivar", "Rune", "Helge", "Einar"),
    ("Lars", "Anders", "Per", "Jan", "Bo", "Hans", "Mats", "Peter", "Göran", "Thomas", "Leif", "Kjell", "Mikael",
     "Stefan", "Ulf", "Bengt", "Roger", "Tommy", "Magnus", "Björn"),
    ("Johan", "Andreas", "Daniel", "Fredrik", "Marcus", "Niklas", "Martin", "Mattias", "Jonas", "Henrik", "Erik",
     "Simon", "Emil", "Viktor", "Oskar", "Joakim", "Robin", "Sebastian", "Alexander", "David"),
    ("William", "Noah", "Hugo", "Liam", "Lucas", "Oliver", "Elias", "Adam", "Vincent", "Alexander", "Matteo", "Nils",
     "Theo", "Leo", "Axel", "Isak", "Arvid", "Ludvig", "Oscar", "Elton"),
)  # fmt: skip

STREETS = (
    "Storgatan", "Kungsgatan", "Drottninggatan", "Skolgatan", "Kyrkogatan", "Järnvägsgatan", "Trädgårdsgatan",
    "Parkvägen", "Björkvägen", "Granvägen", "Tallvägen", "Ekvägen", "Lönnvägen", "Ringvägen", "Industrigatan",
    "Västra vägen", "Östra vägen", "Norra vägen", "Södra vägen", "Bergsgatan", "Ängsvägen", "Sjövägen", "Åsvägen",
    "Skogsvägen", "Lärkvägen", "Rosenvägen", "Solvägen", "Blomstervägen", "Smedjegatan", "Prästgårdsvägen",
    "Hagagatan", "Villagatan", "Backvägen", "Linnégatan", "Strandvägen", "Fabriksgatan", "Nygatan", "Torggatan",
)  # fmt: skip


def generation(birth_year: int) -> int:
    if birth_year < 1950:
        return 0
    if birth_year < 1980:
        return 1
    if birth_year < 2005:
        return 2
    return 3
