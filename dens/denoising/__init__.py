"""DeNS core: structure corruption, force-encoding input and training losses.

The package, by concern: ``settings`` (``DeNSSettings``, ``LossSettings``,
``dens_coefficient``), ``corruption`` (``corrupt``, ``Corruption``, ``force_encoding_input``),
``losses`` (``dens_loss``) and ``checks`` (argument checks); every name
is importable from ``dens.denoising`` itself.

Model-agnostic part of "Generalizing Denoising to Non-Equilibrium Structures Improves
Equivariant Force Fields" (Liao, Smidt, Shuaibi, Das; TMLR 2024). The training engine glues
it to a model::

    forces = force_encoding_input(batch.forces, force_std, dens_settings.force_encoding_units)
    corruption = corrupt(batch, dens_settings, generator, forces=forces,
                         batch_generator=decision_generator)   # the latter for decision "batch"
    inputs = batch.clone()
    inputs.pos = corruption.pos
    prediction = model(inputs, corruption.force_input, predict_noise=True)
    terms = dens_loss(prediction, batch, corruption, energy_target, force_target,
                      loss_settings, dens_settings, dens_coefficient(dens_settings, epoch, epochs))
    terms["total"].backward()

Notation (Section 3): B structures, N atoms in the batch, ``batch`` [N] maps atoms to
structures. Energies and forces are in the engine's normalised units, E' = (E - mu_E) / sigma_E
and f' = f / sigma_F (Eq. 1); the noise head predicts eps / sigma (Eq. 3-4).

Decisions (each checked against the official code, atomicarchitects/DeNS for OC20/OC22 and
atomicarchitects/equiformer ``main_md17_dens.py`` for MD17):

- Which structures (``DeNSSettings.decision``): "structure" (default) = one Bernoulli(p_DeNS)
  draw per structure inside one mixed batch (Algorithm 2 line 7; App. D.1, as the MD17 code
  does: atomicarchitects/equiformer ``main_md17_dens.py``); structures with ``md_split`` True
  are never DeNS structures. "batch" = the official OC20/OC22 trainer (atomicarchitects/DeNS
  e98b747 ``trainers/denoising_forces_trainer.py``:369, ``np.random.rand() < prob`` once per
  batch, numpy seeded alike on every rank by the base trainer's ``set_seed``): one draw from
  ``batch_generator`` (seeded alike on every process) makes every structure of the global batch
  a DeNS structure or none; the atoms of MD-split structures are still never corrupted
  (``add_gaussian_noise_to_position``, lines 67-75), and the corruption mask is drawn over all
  atoms, so a fixed atom it selects gets its force encoded (``equiformer_v2_denoising.py``:337-339
  masks the encoding by ``noise_mask`` only) but no noise (lines 83-84 move free atoms only) and
  no loss (``_compute_loss`` keeps free atoms, lines 491 and 215). Without partial corruption
  every atom of a non-MD structure of a DeNS batch, fixed ones too, has its force encoded.
- Which atoms: each free atom of a DeNS structure is corrupted independently with probability
  r_DeNS (Algorithm 2 lines 10-11). Fixed atoms are never corrupted. A DeNS structure whose
  draws corrupt no atom is kept as it is, as in both official codes (neither forces a
  corruption): it has no noise and no force input, and its loss is exactly Eq. 1 (Algorithm 2
  lines 24-27 with all m_i = 0; the no-energy-loss ablation only drops the energy term of
  structures that have a corrupted atom, since the ablation is about predicting the energy of
  the original structure from a corrupted one). With decision "batch" the ablation drops the
  energy term of every structure of a DeNS batch, as the official model zeroes the whole
  batch's energy (``equiformer_v2_denoising.py``:432-434; its logged term keeps the constant
  lambda_E |E'|, which has no gradient; ours is 0).
- Loss normalisation, ``reduction="structure"`` (default, Algorithm 2): per structure j,
  L_DeNS and L_F are sums over its atoms divided by |S_j|, the number of its free atoms (the
  atoms that carry a loss; fixed atoms are excluded as in the OC20 ``train_on_free_atoms``
  setting), and the batch loss is L_total / B. With partial corruption the denoising term is
  therefore NOT a mean over corrupted atoms: it is divided by |S_j| (line 25), which gives every
  loss-carrying atom the weight lambda_DeNS or lambda_F, like the official OC20 hybrid loss.
  With all atoms corrupted it is Eq. 4 exactly. ``reduction="atom"`` reproduces the official
  MD17 code instead: energy mean over structures, force term mean over all uncorrupted free
  atoms of the batch, denoising term mean over all corrupted atoms of the batch. The two differ
  in the effective weight of the denoising term by about p_DeNS * r_DeNS (1/16 with the MD17
  values of Table 9). ``reduction="free_atoms"`` is the official OC20/OC22 trainer's
  (``_compute_loss``, lines 488-627): energy lambda_E |E' - E_hat| averaged over the B
  structures; forces and noise share ONE mean over the free atoms of the whole batch,
      L_F + L_DeNS = (lambda_F sum_{free i, m_i = 0} err_F + lambda_DeNS sum_{m_i = 1} err_eps)
                     / n_free
  (a DeNS batch with partial corruption: ``compute_atomwise_denoising_pos_and_force_hybrid_loss``,
  line 204; otherwise fairchem's ``DDPLoss`` mean, ocpmodels/modules/loss.py at ocp 5d0f59e, with
  n_free counted over the global batch: ``free_atoms_per_process`` below). Uncorrupted atoms of
  MD-split structures carry the force term, as any uncorrupted free atom. The official code
  also takes the hybrid (per-process) mean for a corrupt-all DeNS batch of the All+MD dataset
  (its batches carry ``md``, so ``noise_mask`` exists); no experiment combines the two, and
  this one counts the global batch there (it differs only with several processes).
- Per-atom error (``ErrorMetric``): "l2mae" = ||x - y||_2, "mse" = ||x - y||_2^2 (Eq. 1, 4, 6
  as written), "mae" = mean_k |x_k - y_k|. The official MD17 code (``main_md17.py`` and
  ``main_md17_dens.py``, ``criterion = L2MAELoss()``) uses "l2mae" for the energy, the forces
  and the noise; its component-wise mean absolute error is only the logged MAE metric. The
  OC20/OC22 configs use "l2mae" for forces and, in the hybrid loss, for the noise as well.
  Eq. 4 writes a squared norm, hence the ``noise_metric`` default "mse".
"""

from dens.denoising.corruption import KCAL_PER_MOL_PER_EV, Corruption, corrupt, force_encoding_input
from dens.denoising.losses import dens_loss, per_atom_error
from dens.denoising.settings import (
    CoefficientDecay,
    Decision,
    DeNSSettings,
    ErrorMetric,
    ForceEncodingUnits,
    LossSettings,
    Reduction,
    dens_coefficient,
)

__all__ = [
    "KCAL_PER_MOL_PER_EV",
    "CoefficientDecay",
    "Corruption",
    "Decision",
    "DeNSSettings",
    "ErrorMetric",
    "ForceEncodingUnits",
    "LossSettings",
    "Reduction",
    "corrupt",
    "dens_coefficient",
    "dens_loss",
    "force_encoding_input",
    "per_atom_error",
]
