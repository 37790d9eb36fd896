"""Money rules: budgets (limits, enforcement, alerts) and cost reports."""
