"""NewBie XML prompts: parsing, validation, building, system prompts, encoder texts."""
