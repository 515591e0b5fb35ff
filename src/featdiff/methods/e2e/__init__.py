"""End-to-end training of encoder E, classifier G and feature denoiser ε_θ.

One iteration on a batch (x, y): the real branch CE(G(E(x)), y); the diffusion branch L_LDM on
E's (standardised, by default detached) features plus semantic terms on the one-step estimate
z̃₀; the generation branch CE(G(ẑ₀), y) on a few-step DDIM sample drawn afresh. `steps` holds the
iteration functions and the table of which parameters each term updates, `strategies` the three
schedules (A synchronous, B alternating, C progressive), `trainer` the loop.
"""
