"""What ``make demo`` shows of each agent."""
