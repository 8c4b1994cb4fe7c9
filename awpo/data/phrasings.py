"""Phrasing templates of the built-in tasks, split into a training and a held-out set.

The two splits share no template (tests check it), so held-out accuracy measures whether a policy
learned to call tools rather than to recognise sentences. ``REQUESTS`` are whole user messages for
one call; ``CLAUSES`` are imperative fragments that ``FRAMES`` join into one message asking for
several calls (parallel and parallel-multiple tasks). A placeholder ``{param}`` or
``{param__variant}`` mentions ``param``; every template mentions all required parameters.
"""

from __future__ import annotations

REQUESTS = {
    "get_weather": {
        "train": ["What's the weather like in {city} right now?",
                  "How warm is it in {city} today? Give me the temperature in {unit}.",
                  "Check the current weather for {city}.",
                  "I'm heading out in {city}. What's the weather doing?",
                  "Tell me the weather in {city} in {unit}, please."],
        "heldout": ["Is it cold in {city} at the moment?",
                    "Could you look up today's conditions in {city}, with temperatures in {unit}?"],
    },
    "convert_units": {
        "train": ["Convert {value} {from_unit} to {to_unit}.",
                  "How many {to_unit} is {value} {from_unit}?",
                  "I have {value} {from_unit}. What is that in {to_unit}?",
                  "Please change {value} {from_unit} into {to_unit}."],
        "heldout": ["What do {value} {from_unit} come to in {to_unit}?",
                    "Express {value} {from_unit} as {to_unit} for me."],
    },
    "calculate": {
        "train": ["What is {a} {operation__word} {b}?",
                  "Please {operation__verb} {a} and {b}.",
                  "Can you work out {a} {operation__word} {b} for me?",
                  "I need the result of {a} {operation__word} {b}."],
        "heldout": ["Quick maths: {a} {operation__word} {b} equals what?",
                    "Use the calculator to {operation__verb} {a} and {b}."],
    },
    "create_calendar_event": {
        "train": ["Put '{title}' on my calendar on {date} at {time}.",
                  "Schedule {title} for {date} at {time}, lasting {duration_minutes} minutes.",
                  "Add an event called {title} on {date} starting at {time}.",
                  "Book {title} in my calendar: {date}, {time}, {duration_minutes} minutes."],
        "heldout": ["I have {title} on {date} at {time}; please block it in my calendar.",
                    "Create a {duration_minutes}-minute calendar entry '{title}' on {date} at {time}."],
    },
    "web_search": {
        "train": ["Search the web for {query}.",
                  "Look up {query} online.",
                  "Find me {num_results} web results about {query}.",
                  "Can you google {query}?"],
        "heldout": ["I'd like to read about {query}; run a web search.",
                    "Get the top {num_results} search hits for {query}."],
    },
    "convert_currency": {
        "train": ["Convert {amount} {from_currency} to {to_currency}.",
                  "How much is {amount} {from_currency} in {to_currency}?",
                  "I want to exchange {amount} {from_currency} for {to_currency}. How much will I get?",
                  "What's {amount} {from_currency} worth in {to_currency} today?"],
        "heldout": ["Turn {amount} {from_currency} into {to_currency} at the current rate.",
                    "If I pay {amount} {from_currency}, what is that in {to_currency}?"],
    },
    "read_file": {
        "train": ["Open {path} and show me what's inside.",
                  "Read the file {path}.",
                  "Show me the first {max_lines} lines of {path}.",
                  "What does {path} contain?"],
        "heldout": ["Print the contents of {path}, at most {max_lines} lines.",
                    "I need to see the file {path}."],
    },
    "get_stock_price": {
        "train": ["What's the current price of {symbol} stock?",
                  "How is {symbol} trading right now?",
                  "Get me the latest {symbol} share price on the {exchange}.",
                  "Check the stock price for {symbol}."],
        "heldout": ["Quote me {symbol} on the {exchange}.",
                    "Where is {symbol} trading at the moment?"],
    },
    "translate_text": {
        "train": ["Translate '{text}' into {target_language}.",
                  "How do you say '{text}' in {target_language}?",
                  "Please translate the {source_language} phrase '{text}' to {target_language}.",
                  "I need '{text}' in {target_language}."],
        "heldout": ["Render '{text}' from {source_language} into {target_language}.",
                    "What is the {target_language} for '{text}'?"],
    },
    "set_timer": {
        "train": ["Set a timer for {minutes} minutes.",
                  "Start a {minutes}-minute timer called {label}.",
                  "Can you time {minutes} minutes for my {label}?",
                  "Timer please: {minutes} minutes."],
        "heldout": ["Count down {minutes} minutes and label it {label}.",
                    "Alert me when {minutes} minutes have passed."],
    },
    "create_reminder": {
        "train": ["Remind me to {message} on {date}.",
                  "Set a reminder on {date} at {time} to {message}.",
                  "Don't let me forget to {message} on {date}.",
                  "Create a reminder: {message}, {date} at {time}."],
        "heldout": ["On {date} I need a nudge to {message}.",
                    "Ping me at {time} on {date} so I {message}."],
    },
    "send_email": {
        "train": ["Email {to} with the subject '{subject}' and say: {body}",
                  "Send a message to {to}. Subject: {subject}. Body: {body}",
                  "Write to {to} about '{subject}': {body}"],
        "heldout": ["Drop {to} a line titled '{subject}' saying '{body}'",
                    "Compose an email for {to}, subject '{subject}', text: {body}"],
    },
    "search_restaurants": {
        "train": ["Find {cuisine} restaurants in {location}.",
                  "Where can I eat in {location}?",
                  "Show me cheap {cuisine} places in {location}, price level at most {max_price}.",
                  "Any good restaurants in {location}?"],
        "heldout": ["I'm hungry in {location} and fancy {cuisine} food. Suggestions?",
                    "List {cuisine} spots in {location} with a price level up to {max_price}."],
    },
    "search_flights": {
        "train": ["Find flights from {origin} to {destination} on {date}.",
                  "Search for a flight {origin} to {destination} on {date} for {passengers} people.",
                  "Are there flights from {origin} to {destination} on {date}?",
                  "I need to fly from {origin} to {destination} on {date}."],
        "heldout": ["Look for {passengers} seats from {origin} to {destination} on {date}.",
                    "What flights leave {origin} for {destination} on {date}?"],
    },
    "add_to_shopping_list": {
        "train": ["Add {items} to my shopping list.",
                  "Put {items} on the {list_name} list.",
                  "I'm out of {items}; add them to the shopping list."],
        "heldout": ["Note down {items} on my shopping list.",
                    "We need {items} for the {list_name} list."],
    },
}

CLAUSES = {
    "get_weather": {"train": ["check the weather in {city}", "tell me how warm it is in {city} in {unit}"],
                    "heldout": ["see what the weather is doing in {city}"]},
    "convert_units": {"train": ["convert {value} {from_unit} to {to_unit}",
                                "tell me how many {to_unit} {value} {from_unit} is"],
                      "heldout": ["express {value} {from_unit} in {to_unit}"]},
    "calculate": {"train": ["work out {a} {operation__word} {b}", "{operation__verb} {a} and {b}"],
                  "heldout": ["compute {a} {operation__word} {b}"]},
    "create_calendar_event": {"train": ["put {title} on my calendar on {date} at {time}"],
                              "heldout": ["block {date} at {time} for {title}"]},
    "web_search": {"train": ["search the web for {query}"], "heldout": ["look up {query} online"]},
    "convert_currency": {"train": ["convert {amount} {from_currency} to {to_currency}",
                                   "tell me what {amount} {from_currency} is in {to_currency}"],
                         "heldout": ["change {amount} {from_currency} into {to_currency}"]},
    "read_file": {"train": ["read the file {path}", "show me {path}"], "heldout": ["open {path}"]},
    "get_stock_price": {"train": ["get the price of {symbol}", "check how {symbol} stock is doing"],
                        "heldout": ["quote {symbol}"]},
    "translate_text": {"train": ["translate '{text}' into {target_language}"],
                       "heldout": ["say '{text}' in {target_language}"]},
    "set_timer": {"train": ["set a {minutes}-minute timer", "start a timer for {minutes} minutes called {label}"],
                  "heldout": ["count down {minutes} minutes"]},
    "create_reminder": {"train": ["remind me to {message} on {date}"], "heldout": ["nudge me on {date} to {message}"]},
    "send_email": {"train": ["email {to} with subject '{subject}' saying '{body}'"],
                   "heldout": ["write to {to}, subject '{subject}', text '{body}'"]},
    "search_restaurants": {"train": ["find {cuisine} restaurants in {location}", "find places to eat in {location}"],
                           "heldout": ["list {cuisine} food spots in {location}"]},
    "search_flights": {"train": ["find flights from {origin} to {destination} on {date}"],
                       "heldout": ["look for a flight {origin} to {destination} on {date}"]},
    "add_to_shopping_list": {"train": ["add {items} to my shopping list"],
                             "heldout": ["note {items} on the shopping list"]},
}

# How clauses combine into one message; "{c1}" ... "{cN}" are the clauses, in order.
FRAMES = {
    "train": {2: ["Please {c1} and {c2}.", "Can you {c1}, and also {c2}?", "I need two things: {c1}; {c2}.",
                  "First {c1}, then {c2}."],
              3: ["Please {c1}, {c2} and {c3}.", "Three things: {c1}; {c2}; {c3}.",
                  "Could you {c1}, {c2}, and finally {c3}?"]},
    "heldout": {2: ["Help me out: {c1}, plus {c2}.", "Would you {c1} and then {c2}?"],
                3: ["Here's my list: {c1}, {c2}, and {c3}.", "Would you {c1}, then {c2}, and also {c3}?"]},
}

# Requests no built-in tool can serve (besides "near misses": requests for a tool not offered).
NO_TOOL_REQUESTS = {
    "train": ["Write a short poem about autumn leaves.", "Who painted the Mona Lisa?",
              "Tell me a joke about cats.", "What's the capital of Australia?",
              "Summarise the plot of Romeo and Juliet in two sentences.", "How do I say no politely to a friend?",
              "Give me three tips for better sleep.", "What is photosynthesis?"],
    "heldout": ["Compose a limerick about a sleepy dog.", "Why is the sky blue?",
                "Suggest a name for my new goldfish.", "Explain what a black hole is to a child."],
}
