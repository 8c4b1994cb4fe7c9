"""The built-in tool library: function docs (BFCL shape) and a seeded sampler of arguments per tool.

A sampler returns a ``Sample``: the argument values, extra acceptable values (aliases), and the
surface text for each template placeholder. A placeholder ``{param}`` or ``{param__variant}``
mentions ``param``; see ``phrasings.py`` for the templates and ``builtin.py`` for how the ground
truth follows from which parameters a template mentions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Sample:
    values: dict  # param -> value the call should carry
    text: dict  # placeholder -> surface string
    aliases: dict = field(default_factory=dict)  # param -> further acceptable values


@dataclass(frozen=True)
class ToolSpec:
    doc: dict  # BFCL function doc
    sample: Callable[[random.Random], Sample]
    # tools that could also serve this tool's requests: never offered as its distractors,
    # never offered on an irrelevance task built from its requests
    overlaps: frozenset = frozenset()

    @property
    def name(self) -> str:
        return self.doc["name"]

    @property
    def required(self) -> list[str]:
        return self.doc["parameters"]["required"]

    def default(self, param: str):
        return self.doc["parameters"]["properties"][param].get("default")


def function_doc(name: str, description: str, params: dict, required: list[str]) -> dict:
    """``params``: name -> (type, description[, default]); BFCL's "dict" parameters object."""
    properties = {}
    for param, spec in params.items():
        kind, text, *default = spec
        properties[param] = {"type": kind, "description": text} if text else {"type": kind}
        if kind == "array":
            properties[param]["items"] = {"type": "string"}
        if default:
            properties[param]["default"] = default[0]
    return {"name": name, "description": description,
            "parameters": {"type": "dict", "properties": properties, "required": required}}


CITIES = ["Paris", "Tokyo", "New York", "London", "Berlin", "Madrid", "Rome", "Toronto", "Sydney",
          "Mumbai", "Cairo", "Lisbon", "Seoul", "Chicago", "Nairobi", "Oslo", "Lima", "Dublin"]
UNIT_NAMES = {"km": ["kilometers"], "miles": ["mi"], "kg": ["kilograms"], "pounds": ["lb", "lbs"],
              "meters": ["m"], "feet": ["ft"], "liters": ["l"], "gallons": ["gal"]}
UNIT_PAIRS = [("km", "miles"), ("miles", "km"), ("kg", "pounds"), ("pounds", "kg"),
              ("meters", "feet"), ("feet", "meters"), ("liters", "gallons"), ("gallons", "liters")]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "INR"]
STOCKS = ["AAPL", "MSFT", "GOOGL", "AMZN", "TSLA", "NVDA", "META", "NFLX"]
LANGUAGES = ["Spanish", "French", "German", "Italian", "Japanese", "Portuguese", "Dutch"]
PHRASES = ["good morning", "where is the train station", "thank you very much", "see you tomorrow",
           "how much does this cost", "I would like a coffee", "the meeting is at noon"]
PEOPLE = {"Anna": "anna@example.com", "Ben": "ben@example.com", "Chloe": "chloe@example.com",
          "Dev": "dev@example.com", "Elena": "elena@example.com", "Farid": "farid@example.com"}
SUBJECTS = [("Quarterly report", "The quarterly report is attached."),
            ("Lunch on Friday", "Are you free for lunch on Friday?"),
            ("Project update", "The prototype is ready for review."),
            ("Trip plans", "I booked the hotel for our trip.")]
QUERIES = ["best hiking trails near Denver", "history of the printing press", "how to repot a cactus",
           "symptoms of vitamin D deficiency", "latest results of the Champions League", "easy vegan lasagna recipe",
           "how do solar panels work", "cheap flights tips"]
FILES = ["notes.txt", "report.csv", "todo.md", "config.yaml", "server.log", "draft.docx"]
TIMER_LABELS = ["tea", "pasta", "laundry", "break", "workout", "oven"]
REMINDERS = ["call mom", "pay the rent", "water the plants", "submit the report", "renew my passport",
             "buy a birthday gift"]
EVENTS = ["Team meeting", "Dentist appointment", "Lunch with Sam", "Project review", "Yoga class",
          "Parent-teacher meeting"]
CUISINES = ["italian", "thai", "mexican", "indian", "japanese", "vegan", "greek"]
GROCERIES = ["milk", "eggs", "bread", "apples", "rice", "coffee", "butter", "cheese", "tomatoes", "spinach"]
OPERATIONS = {"add": ("add", "plus"), "subtract": ("subtract", "minus"), "multiply": ("multiply", "times"),
              "divide": ("divide", "divided by")}


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(7, 20):02d}:{rng.choice(['00', '15', '30', '45'])}"


def _amount(rng: random.Random) -> float:
    return float(rng.choice([rng.randint(5, 900), rng.randint(1, 99) + 0.5]))


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _weather(rng):
    city, unit = rng.choice(CITIES), rng.choice(["celsius", "fahrenheit"])
    return Sample({"city": city, "unit": unit}, {"city": city, "unit": unit})


def _convert_units(rng):
    source, target = rng.choice(UNIT_PAIRS)
    value = _amount(rng)
    source_text = rng.choice([source, UNIT_NAMES[source][0]])
    target_text = rng.choice([target, UNIT_NAMES[target][0]])
    return Sample({"value": value, "from_unit": source, "to_unit": target},
                  {"value": _number_text(value), "from_unit": source_text, "to_unit": target_text},
                  {"from_unit": UNIT_NAMES[source], "to_unit": UNIT_NAMES[target]})


def _calculate(rng):
    operation = rng.choice(list(OPERATIONS))
    a, b = float(rng.randint(2, 99)), float(rng.randint(2, 30))
    verb, word = OPERATIONS[operation]
    return Sample({"operation": operation, "a": a, "b": b},
                  {"operation__verb": verb, "operation__word": word, "a": _number_text(a), "b": _number_text(b)})


def _calendar(rng):
    title, date, time, minutes = rng.choice(EVENTS), _date(rng), _time(rng), rng.choice([30, 45, 90, 120])
    return Sample({"title": title, "date": date, "time": time, "duration_minutes": minutes},
                  {"title": title, "date": date, "time": time, "duration_minutes": str(minutes)})


def _search(rng):
    query, count = rng.choice(QUERIES), rng.choice([3, 10])
    return Sample({"query": query, "num_results": count}, {"query": query, "num_results": str(count)})


def _currency(rng):
    source, target = rng.sample(CURRENCIES, 2)
    amount = _amount(rng)
    return Sample({"amount": amount, "from_currency": source, "to_currency": target},
                  {"amount": _number_text(amount), "from_currency": source, "to_currency": target})


def _read_file(rng):
    path, lines = rng.choice(FILES), rng.choice([10, 20, 50])
    return Sample({"path": path, "max_lines": lines}, {"path": path, "max_lines": str(lines)})


def _stock(rng):
    symbol, exchange = rng.choice(STOCKS), "NYSE"
    return Sample({"symbol": symbol, "exchange": exchange}, {"symbol": symbol, "exchange": exchange})


def _translate(rng):
    text, target, source = rng.choice(PHRASES), rng.choice(LANGUAGES), "English"
    return Sample({"text": text, "target_language": target, "source_language": source},
                  {"text": text, "target_language": target, "source_language": source})


def _timer(rng):
    minutes, label = rng.choice([3, 5, 8, 10, 12, 15, 20, 25, 45]), rng.choice(TIMER_LABELS)
    return Sample({"minutes": minutes, "label": label}, {"minutes": str(minutes), "label": label})


def _reminder(rng):
    message, date, time = rng.choice(REMINDERS), _date(rng), _time(rng)
    return Sample({"message": message, "date": date, "time": time}, {"message": message, "date": date, "time": time})


def _email(rng):
    person = rng.choice(list(PEOPLE))
    subject, body = rng.choice(SUBJECTS)
    return Sample({"to": PEOPLE[person], "subject": subject, "body": body},
                  {"to": PEOPLE[person], "subject": subject, "body": body})


def _restaurants(rng):
    city, cuisine, price = rng.choice(CITIES), rng.choice(CUISINES), rng.choice([1, 2, 4])
    return Sample({"location": city, "cuisine": cuisine, "max_price": price},
                  {"location": city, "cuisine": cuisine, "max_price": str(price)})


def _flights(rng):
    origin, destination = rng.sample(CITIES, 2)
    date, passengers = _date(rng), rng.choice([2, 3, 4])
    return Sample({"origin": origin, "destination": destination, "date": date, "passengers": passengers},
                  {"origin": origin, "destination": destination, "date": date, "passengers": str(passengers)})


def _shopping(rng):
    items = rng.sample(GROCERIES, rng.choice([2, 3]))
    listing = ", ".join(items[:-1]) + " and " + items[-1]
    return Sample({"items": items, "list_name": "party"}, {"items": listing, "list_name": "party"})


_INFO = frozenset({"web_search"})
TOOLS: dict[str, ToolSpec] = {spec.name: spec for spec in [
    ToolSpec(function_doc("get_weather", "Get the current weather in a city.", {
        "city": ("string", ""),
        "unit": ("string", "celsius or fahrenheit", "celsius")}, ["city"]), _weather, _INFO),
    ToolSpec(function_doc("convert_units", "Convert a value between units.", {
        "value": ("float", "Amount"),
        "from_unit": ("string", "e.g. km"),
        "to_unit": ("string", "e.g. miles")}, ["value", "from_unit", "to_unit"]), _convert_units),
    ToolSpec(function_doc("calculate", "Apply an operation to two numbers.", {
        "operation": ("string", "add, subtract, multiply or divide"),
        "a": ("float", ""),
        "b": ("float", "")}, ["operation", "a", "b"]), _calculate),
    ToolSpec(function_doc("create_calendar_event", "Add an event to the calendar.", {
        "title": ("string", ""),
        "date": ("string", "YYYY-MM-DD"),
        "time": ("string", "HH:MM"),
        "duration_minutes": ("integer", "", 60)}, ["title", "date", "time"]), _calendar,
        frozenset({"create_reminder"})),
    ToolSpec(function_doc("web_search", "Search the web.", {
        "query": ("string", ""),
        "num_results": ("integer", "", 5)}, ["query"]), _search),
    ToolSpec(function_doc("convert_currency", "Convert money between currencies.", {
        "amount": ("float", ""),
        "from_currency": ("string", "e.g. USD"),
        "to_currency": ("string", "e.g. EUR")}, ["amount", "from_currency", "to_currency"]), _currency,
        _INFO),
    ToolSpec(function_doc("read_file", "Read a text file.", {
        "path": ("string", ""),
        "max_lines": ("integer", "", 100)}, ["path"]), _read_file),
    ToolSpec(function_doc("get_stock_price", "Get the latest price of a stock.", {
        "symbol": ("string", "e.g. AAPL"),
        "exchange": ("string", "", "NASDAQ")}, ["symbol"]), _stock, _INFO),
    ToolSpec(function_doc("translate_text", "Translate text into another language.", {
        "text": ("string", ""),
        "target_language": ("string", ""),
        "source_language": ("string", "", "auto")}, ["text", "target_language"]), _translate),
    ToolSpec(function_doc("set_timer", "Start a countdown timer.", {
        "minutes": ("integer", ""),
        "label": ("string", "")}, ["minutes"]), _timer, frozenset({"create_reminder"})),
    ToolSpec(function_doc("create_reminder", "Set a reminder.", {
        "message": ("string", ""),
        "date": ("string", "YYYY-MM-DD"),
        "time": ("string", "HH:MM", "09:00")}, ["message", "date"]), _reminder,
        frozenset({"create_calendar_event", "set_timer"})),
    ToolSpec(function_doc("send_email", "Send an email.", {
        "to": ("string", "Email address"),
        "subject": ("string", ""),
        "body": ("string", "")}, ["to", "subject", "body"]), _email),
    ToolSpec(function_doc("search_restaurants", "Find restaurants in a city.", {
        "location": ("string", "City"),
        "cuisine": ("string", ""),
        "max_price": ("integer", "1 to 4", 4)}, ["location"]), _restaurants, _INFO),
    ToolSpec(function_doc("search_flights", "Search for flights.", {
        "origin": ("string", "City"),
        "destination": ("string", "City"),
        "date": ("string", "YYYY-MM-DD"),
        "passengers": ("integer", "", 1)}, ["origin", "destination", "date"]), _flights, _INFO),
    ToolSpec(function_doc("add_to_shopping_list", "Add items to a shopping list.", {
        "items": ("array", ""),
        "list_name": ("string", "", "groceries")}, ["items"]), _shopping),
]}

# web_search can answer almost any information request, so it is never a distractor and never
# offered on irrelevance tasks (its presence would make "no tool fits" false).
GENERAL_TOOLS = frozenset({"web_search"})
