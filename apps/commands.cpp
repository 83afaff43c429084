#include "apps/commands.hpp"

namespace mm::cli {

int bench_main(int argc, char** argv);
int pretrain_main(int argc, char** argv);
int info_main(int argc, char** argv);
int score_main(int argc, char** argv);
int vep_main(int argc, char** argv);
int embed_main(int argc, char** argv);
int finetune_main(int argc, char** argv);
int classify_main(int argc, char** argv);

const std::vector<Command>& commands() {
  static const std::vector<Command> list = {
      {"score", "per-base log-probability / entropy of a reference (bedGraph, bigWig, TSV)", score_main},
      {"vep", "variant effect scores (MM_LLR: log-likelihood ratio ALT vs REF) added to a VCF/BCF", vep_main},
      {"embed", "one vector per sequence or region from a chosen layer (mean or last pooling; .npy or TSV)", embed_main},
      {"finetune", "train a sequence or variant classifier on a model (frozen or full) or a k-mer baseline", finetune_main},
      {"classify", "apply a fine-tuned classifier: TSV or VCF out, accuracy/MCC/F1/AUROC with labels", classify_main},
      {"pretrain", "train a model on FASTA/BAM/CRAM (CPU, GPU or several GPUs), with held-out validation and a Markov reference", pretrain_main},
      {"info", "a checkpoint's or classifier's config, parameter counts, provenance and model card", info_main},
      {"bench", "speed of the model and its kernels on this machine", bench_main},
  };
  return list;
}

}  // namespace mm::cli
