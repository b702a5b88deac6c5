"""Quality measures of a run (issue 14): is the dataset good, and what did it cost?

Each measure is one small module with a ``section(ctx)`` that reads what the stages and the merge already
wrote (markers, their ``stats``, a sample of the dataset, the review file) and returns a
:class:`~kun_hpc.quality.section.Section`; :func:`kun_hpc.quality.report.sections` lists them in the order
the merge report and the dataset card show them. Per-record values (an answer's faithfulness and flags) are
computed by the stages that own the record (the rules stage), never here. docs/quality.md explains every
number.
"""
