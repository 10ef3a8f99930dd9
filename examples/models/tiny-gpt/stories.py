"""The corpus tiny-gpt is trained on: short children's stories made by a small grammar.

Every story is written by this file from a seed, so the corpus needs no download and carries
no third-party licence: it is the project's own text (MIT, like the rest of pipe). The grammar
is small enough for a ~1M-parameter model to learn in a few minutes on two CPU cores, and has
real structure for it to pick up: a character introduced with a name, a gender and an animal
kind is referred to again by name and by the right pronoun, the object that is lost is the one
that is found, the friend who is sad is the one who becomes happy, and so on.

``stories(n, seed)`` returns ``n`` stories (strings, one paragraph each, no trailing newline).
The same ``(n, seed)`` always gives the same stories (Python's ``random.Random`` with an
integer seed and ``choice``/``randint``/``random`` is stable across Python 3 versions).
"""

from __future__ import annotations

import random

GIRLS = [
    "Lily", "Mia", "Anna", "Sara", "Emma", "Lucy", "Rosa", "Ella", "Zoe", "Amy",
    "Nora", "Ruby", "Ivy", "Maya", "Lena", "Kate",
]
BOYS = [
    "Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Otto",
    "Eli", "Hugo", "Luke", "Omar", "Dan", "Theo",
]
ANIMALS = [
    "cat", "dog", "bunny", "bear", "fox", "bird", "duck", "frog", "mouse", "pig",
    "lamb", "owl", "puppy", "kitten", "squirrel", "turtle",
]
SIZES = ["little", "big", "small", "tiny"]
TRAITS = [
    "kind", "happy", "brave", "shy", "curious", "funny", "gentle", "clever", "sleepy",
    "friendly",
]
COLORS = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "brown"]
OBJECTS = [
    "ball", "hat", "kite", "book", "cup", "box", "drum", "bell", "boat", "sock",
    "key", "shoe", "scarf", "toy car", "blanket", "basket",
]
PLACES = [
    ("the park", "park"), ("the forest", "forest"), ("the garden", "garden"),
    ("the beach", "beach"), ("the farm", "farm"), ("the hill", "hill"),
    ("the lake", "lake"), ("the meadow", "meadow"), ("the town", "town"),
]
HOMES = [
    "in a small house", "in a cozy den", "near a big tree", "by the river",
    "in a little red house", "on a quiet farm", "at the edge of the forest",
    "in a busy town",
]
HIDING = [
    "under a bush", "behind a tree", "under a big rock", "in the tall grass",
    "near the pond", "under a bench", "behind the fence", "inside an old log",
    "next to a flower", "in a pile of leaves",
]
LIKES = [
    "play in the sun", "run and jump", "sing songs", "read books", "draw pictures",
    "dance", "look at the stars", "pick flowers", "climb trees", "swim in the lake",
    "build things", "eat apples",
]
FOODS = ["a cake", "cookies", "soup", "a pie", "bread", "pancakes", "muffins", "a pizza"]
FRUITS = ["apples", "berries", "carrots", "pears", "nuts", "plums"]
WEATHER = ["sunny", "warm", "windy", "cold", "bright", "rainy"]
TIMES = ["morning", "day", "afternoon", "evening"]
SAD = ["sad", "upset", "worried", "unhappy"]
HAPPY = ["happy", "glad", "very happy", "so happy"]
SCARY = [
    "heard a loud noise", "saw a big shadow", "was afraid of the dark",
    "was afraid of the thunder", "heard the strong wind",
]
SOUNDS = {
    "cat": "meow", "dog": "woof", "bunny": "squeak", "bear": "growl", "fox": "yip",
    "bird": "tweet", "duck": "quack", "frog": "ribbit", "mouse": "squeak", "pig": "oink",
    "lamb": "baa", "owl": "hoot", "puppy": "woof", "kitten": "meow", "squirrel": "chirp",
    "turtle": "hum",
}


class Who:
    """A character: a name, an animal kind and the pronouns that go with it."""

    def __init__(self, rng: random.Random, avoid: set[str]):
        self.girl = rng.random() < 0.5
        names = [n for n in (GIRLS if self.girl else BOYS) if n not in avoid]
        self.name = rng.choice(names)
        self.animal = rng.choice(ANIMALS)
        self.size = rng.choice(SIZES)
        self.trait = rng.choice(TRAITS)
        self.he = "she" if self.girl else "he"
        self.him = "her" if self.girl else "him"
        self.his = "her" if self.girl else "his"

    @property
    def He(self) -> str:
        return self.he.capitalize()

    @property
    def His(self) -> str:
        return self.his.capitalize()


def a(word: str) -> str:
    """``word`` with the right indefinite article."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def opening(rng: random.Random, hero: Who) -> list[str]:
    form = rng.randint(0, 3)
    if form == 0:
        s = (f"Once upon a time, there was {a(hero.size)} {hero.animal} named {hero.name}.")
    elif form == 1:
        s = f"Once upon a time, {a(hero.trait)} {hero.animal} called {hero.name} lived {rng.choice(HOMES)}."
    elif form == 2:
        s = f"There once was {a(hero.trait)} little {hero.animal}. {hero.His} name was {hero.name}."
    else:
        s = f"{hero.name} was {a(hero.size)} {hero.animal} who lived {rng.choice(HOMES)}."
    out = [s]
    if rng.random() < 0.7:
        out.append(f"{hero.name} loved to {rng.choice(LIKES)}.")
    if rng.random() < 0.4:
        out.append(f"{hero.He} was very {hero.trait}.")
    return out


def lost_thing(rng: random.Random, hero: Who) -> list[str]:
    friend = Who(rng, {hero.name})
    thing = rng.choice(OBJECTS)
    color = rng.choice(COLORS)
    place, short = rng.choice(PLACES)
    spot = rng.choice(HIDING)
    out = [
        f"One {rng.choice(TIMES)}, {hero.name} went to {place}.",
        f"There, {hero.he} met {a(friend.animal)} named {friend.name}.",
        f"{friend.name} was {rng.choice(SAD)} because {friend.he} lost {friend.his} {color} {thing}.",
        f'"Do not worry," said {hero.name}. "I will help you find it."',
        f"They looked everywhere in the {short}.",
    ]
    if rng.random() < 0.5:
        out.append(f"They looked {rng.choice(HIDING)}, but the {thing} was not there.")
    out += [
        f"At last, {hero.name} saw something {color} {spot}.",
        f"It was the {color} {thing}!",
        f"{friend.name} was {rng.choice(HAPPY)}. \"Thank you, {hero.name}!\" {friend.he} said.",
        f"From that day on, {hero.name} and {friend.name} were best friends.",
    ]
    return out


def sharing(rng: random.Random, hero: Who) -> list[str]:
    friend = Who(rng, {hero.name})
    fruit = rng.choice(FRUITS)
    n = rng.choice(["two", "three", "four", "five", "six"])
    out = [
        f"One {rng.choice(WEATHER)} {rng.choice(TIMES)}, {hero.name} found {n} {fruit}.",
        f"{hero.He} wanted to eat them all.",
        f"Then {hero.he} saw {friend.name} the {friend.animal}.",
        f"{friend.name} looked hungry.",
    ]
    if rng.random() < 0.75:
        out += [
            f"{hero.name} thought for a moment. Then {hero.he} gave some {fruit} to {friend.name}.",
            f"{friend.name} smiled. \"You are very kind, {hero.name},\" {friend.he} said.",
            f"They ate the {fruit} together under a tree.",
            f"{hero.name} learned that sharing makes everyone happy.",
        ]
    else:
        out += [
            f"But {hero.name} did not want to share.",
            f"{hero.He} ate all the {fruit} alone, and soon {hero.he} felt sick.",
            f"{friend.name} came to help {hero.him} and made {hero.him} some tea.",
            f"{hero.name} said sorry. Next time, {hero.he} would share.",
        ]
    return out


def scared(rng: random.Random, hero: Who) -> list[str]:
    scary = rng.choice(SCARY)
    helper = Who(rng, {hero.name})
    parent = rng.choice(["mom", "dad"])
    out = [
        f"One night, {hero.name} {scary}.",
        f"{hero.He} hid under {hero.his} {rng.choice(COLORS)} blanket.",
    ]
    if rng.random() < 0.5:
        out += [
            f"{hero.His} {parent} came and sat on the bed.",
            f'"There is nothing to fear," said {hero.his} {parent}. "I am right here."',
            f"{hero.His} {parent} sang a soft song, and {hero.name} felt safe.",
        ]
    else:
        out += [
            f"Then {hero.he} heard a small voice. \"{SOUNDS[helper.animal].capitalize()}! It is me, {helper.name}!\"",
            f"It was {helper.name} the {helper.animal}, and {helper.he} was scared too.",
            f"{hero.name} and {helper.name} held hands and were not scared anymore.",
        ]
    out.append(f"Soon {hero.name} fell asleep and had a happy dream.")
    return out


def baking(rng: random.Random, hero: Who) -> list[str]:
    dish = rng.choice(FOODS)
    food = dish[2:] if dish.startswith("a ") else dish
    plural = food.endswith("s")
    it, they, was = ("them", "they", "were") if plural else ("it", "it", "was")
    friend = Who(rng, {hero.name})
    out = [
        f"One {rng.choice(TIMES)}, {hero.name} wanted to make {dish}.",
        f"{hero.He} asked {friend.name} the {friend.animal} to help.",
        f"They mixed and stirred and put the {food} in the oven.",
    ]
    if rng.random() < 0.4:
        out += [
            f"Oh no! They forgot about the {food}, and {they} got too hot.",
            f"{hero.name} was {rng.choice(SAD)}, but {friend.name} said, \"We can try again!\"",
            f"The second time, they watched {it} very carefully.",
        ]
    out += [
        f"The {food} smelled so good." if rng.random() < 0.5 else f"The {food} {was} warm and sweet.",
        f"{hero.name} and {friend.name} ate {it} together and laughed.",
    ]
    return out


def adventure(rng: random.Random, hero: Who) -> list[str]:
    place, short = rng.choice(PLACES)
    thing = rng.choice(OBJECTS)
    color = rng.choice(COLORS)
    out = [
        f"One {rng.choice(WEATHER)} day, {hero.name} went on an adventure to {place}.",
        f"{hero.He} took {hero.his} {color} {thing} with {hero.him}.",
        f"On the way, {hero.he} saw {a(rng.choice(TRAITS))} {rng.choice(ANIMALS)} and waved hello.",
    ]
    if rng.random() < 0.5:
        out += [
            f"It began to rain, so {hero.name} hid {rng.choice(HIDING)}.",
            f"When the rain stopped, {hero.he} saw a big rainbow over the {short}.",
        ]
    else:
        out += [
            f"At the {short}, {hero.name} found a shiny stone.",
            f"{hero.He} put the stone in {hero.his} pocket to show {hero.his} mom.",
        ]
    out.append(f"When {hero.name} came home, {hero.he} was tired but {rng.choice(HAPPY)}.")
    return out


PLOTS = [lost_thing, sharing, scared, baking, adventure]


def story(rng: random.Random) -> str:
    """One story: an opening, one plot, sometimes a closing line."""
    hero = Who(rng, set())
    sentences = opening(rng, hero) + rng.choice(PLOTS)(rng, hero)
    if rng.random() < 0.3:
        sentences.append("The end.")
    return " ".join(sentences)


def stories(n: int, seed: int = 0) -> list[str]:
    """``n`` stories from the grammar, the same for the same ``(n, seed)``."""
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]


if __name__ == "__main__":
    for s in stories(5):
        print(s, end="\n\n")
