"""Sixteen short documents, each with a faithful paraphrase written for these tests; the
paraphrase of the next document serves as an off-topic one."""

DOCUMENTS = [
    ("glacier", "The Aletsch Glacier in the Swiss Alps is about 23 kilometres long. It has lost "
     "more than three kilometres of its length since 1870 as summers have grown warmer.",
     "Measuring roughly 23 km, Switzerland's Aletsch Glacier has retreated by over 3 km since "
     "1870, a loss driven by warmer summers in the Alps."),
    ("bread", "To make sourdough, a baker mixes flour and water with a starter of wild yeast "
     "and lactic bacteria. The dough rises slowly, often overnight, which gives the bread its "
     "sour taste.",
     "Sourdough bread is made by combining flour, water and a starter that holds wild yeast "
     "and lactic acid bacteria; its slow, usually overnight rise produces the sour flavour."),
    ("python", "Python 3.12 was released in October 2023. It made f-strings more flexible and "
     "improved error messages that suggest the name you probably meant.",
     "Released in October 2023, Python 3.12 loosened the rules for f-strings and gave better "
     "error messages, including hints about the name a programmer likely intended."),
    ("bees", "Honey bees tell each other where food is with a waggle dance. The angle of the "
     "dance shows the direction relative to the sun, and its length shows the distance.",
     "Using the waggle dance, a honey bee shows its hive mates where to find food: the dance's "
     "angle gives the direction compared with the sun and its duration gives how far away."),
    ("bridge", "The Golden Gate Bridge opened in 1937 and spans 1,280 metres between its two "
     "towers. Its orange colour was chosen so that ships could see it in fog.",
     "Opened in 1937, the Golden Gate Bridge has a main span of 1,280 m between its towers, "
     "and it was painted orange to stay visible to ships in the fog."),
    ("vaccine", "Edward Jenner tested the first smallpox vaccine in 1796. He used material from "
     "cowpox sores to protect a boy named James Phipps from smallpox.",
     "In 1796 Edward Jenner carried out the first smallpox vaccination, taking matter from "
     "cowpox lesions to make a boy, James Phipps, immune to smallpox."),
    ("chess", "In chess, castling moves the king two squares toward a rook and puts that rook "
     "on the square the king crossed. It is not allowed while the king is in check.",
     "Castling in chess shifts the king two squares toward one of its rooks, which then lands "
     "on the square the king passed over; a king in check may not castle."),
    ("volcano", "Mount Vesuvius erupted in 79 AD and buried the Roman towns of Pompeii and "
     "Herculaneum under ash. It is still active and last erupted in 1944.",
     "The eruption of Vesuvius in 79 AD covered the Roman cities of Pompeii and Herculaneum "
     "in ash; the volcano remains active, with its latest eruption in 1944."),
    ("tea", "Green tea and black tea come from the same plant, Camellia sinensis. Black tea is "
     "oxidised before it is dried, while green tea is heated soon after picking to stop that.",
     "Both green and black tea are made from Camellia sinensis; black tea leaves are allowed "
     "to oxidise before drying, whereas green tea is heated shortly after harvest to prevent "
     "oxidation."),
    ("moon", "The Moon is about 384,000 kilometres from Earth. It always shows the same face "
     "to us because it rotates once in the time it takes to orbit once.",
     "Roughly 384,000 km away, the Moon keeps the same side turned toward Earth, since one "
     "rotation takes exactly as long as one orbit."),
    ("piano", "A modern piano has 88 keys: 52 white and 36 black. Pressing a key makes a felt "
     "hammer strike one to three steel strings.",
     "Today's pianos have 88 keys, 52 of them white and 36 black; each key drives a "
     "felt-covered hammer against between one and three steel strings."),
    ("rain", "Rainbows appear when sunlight is refracted and reflected inside raindrops. The "
     "light splits into colours, with red on the outside of the arc and violet on the inside.",
     "A rainbow forms as sunlight bends and reflects within raindrops, separating into "
     "colours that run from red on the outer edge of the arc to violet on the inner edge."),
    ("marathon", "The marathon distance is 42.195 kilometres. It was fixed at the 1908 London "
     "Olympics so that the race could start at Windsor Castle.",
     "A marathon covers 42.195 km, a length set at the 1908 Olympic Games in London to let "
     "the course begin at Windsor Castle."),
    ("coral", "Coral reefs are built by tiny animals called polyps that make skeletons of "
     "calcium carbonate. When the water gets too warm, corals expel their algae and bleach.",
     "Reefs of coral are the work of small animals, polyps, which build calcium carbonate "
     "skeletons; in overly warm water the corals push out their algae and turn white."),
    ("printing", "Johannes Gutenberg built a printing press with movable metal type around "
     "1440 in Mainz. His Bible, printed in the 1450s, was one of the first books made this way.",
     "Around 1440 in Mainz, Johannes Gutenberg created a press that used movable metal type; "
     "the Bible he printed in the 1450s was among the earliest books produced with it."),
    ("sleep", "Adults need seven to nine hours of sleep a night. During deep sleep the body "
     "repairs tissue, and during REM sleep most dreaming happens.",
     "Grown-ups should sleep between seven and nine hours each night; tissue repair takes "
     "place in deep sleep, while the majority of dreams occur in REM sleep."),
]


def docs() -> list[dict]:
    return [{"id": name, "text": text} for name, text, _ in DOCUMENTS]


def faithful() -> dict[str, str]:
    return {name: paraphrase for name, _, paraphrase in DOCUMENTS}


def off_topic() -> dict[str, str]:
    """For each document, the paraphrase of the next one (another subject entirely)."""
    names = [name for name, _, _ in DOCUMENTS]
    para = faithful()
    return {name: para[names[(i + 1) % len(names)]] for i, name in enumerate(names)}
