"""Filtering before the GPUs: cleaning, segmentation into <= max_tokens units, cheap rules, perplexity.

One concern a module:

* :mod:`~kun_hpc.filtering.clean` -- whitespace/control normalisation, ftfy, optional OpenCC t2s;
* :mod:`~kun_hpc.filtering.segment` -- paragraph, sentence, clause cuts and packing within the token budget;
* :mod:`~kun_hpc.filtering.tokens` -- batched token counts with the Label model's Rust tokenizer;
* :mod:`~kun_hpc.filtering.rules` -- the cheap named rules (reason codes);
* :mod:`~kun_hpc.filtering.perplexity` -- LM (vLLM / transformers) and KenLM scorers behind one interface;
* :mod:`~kun_hpc.filtering.ngram` -- the character n-gram ARPA builder for KenLM;
* :mod:`~kun_hpc.filtering.buckets` -- head/middle/tail cut-offs, absolute or by percentile;
* :mod:`~kun_hpc.filtering.chain` -- all of it in order, cheapest first.

The pipeline stage is :class:`kun_hpc.stages.filter.FilterStage`.
"""
