"""course: exercise checks, the HTML report and the `convtips` command."""
