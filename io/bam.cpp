// BamReader: htslib sam_open/sam_read1/sam_itr behind RAII handles.
#include "io/bam.hpp"

#include <htslib/hts.h>
#include <htslib/sam.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "io/error.hpp"

namespace mm::io {

struct BamReader::Handles {
  htsFile* fp = nullptr;
  sam_hdr_t* hdr = nullptr;
  hts_idx_t* idx = nullptr;
  hts_itr_t* itr = nullptr;
  bam1_t* b = bam_init1();
  bool cram = false;
  ~Handles() {
    if (itr) hts_itr_destroy(itr);
    if (idx) hts_idx_destroy(idx);
    if (hdr) sam_hdr_destroy(hdr);
    if (fp) hts_close(fp);
    bam_destroy1(b);
  }
};

BamReader::BamReader(std::string path, BamOptions options)
    : path_(std::move(path)), options_(std::move(options)), h_(std::make_unique<Handles>()) {
  h_->fp = sam_open(path_.c_str(), "r");
  if (!h_->fp) throw Error(std::string("cannot open alignment file: ") + std::strerror(errno), path_);
  const htsFormat* fmt = hts_get_format(h_->fp);
  if (fmt->category != sequence_data || (fmt->format != sam && fmt->format != bam && fmt->format != cram))
    throw Error("not a SAM, BAM or CRAM file", path_);
  h_->cram = fmt->format == cram;
  if (!options_.reference.empty()) {
    // Checked here because htslib only notices a missing reference when it first decodes a read.
    if (!std::filesystem::exists(options_.reference))
      throw Error("reference FASTA not found: " + options_.reference, path_);
    if (hts_set_fai_filename(h_->fp, options_.reference.c_str()) < 0)
      throw Error("cannot use reference FASTA " + options_.reference, path_);
  }
  h_->hdr = sam_hdr_read(h_->fp);
  if (!h_->hdr) throw Error("cannot read the SAM/BAM/CRAM header (truncated or not an alignment file)", path_);
  for (int i = 0, n = sam_hdr_nref(h_->hdr); i < n; ++i) contigs_.emplace_back(sam_hdr_tid2name(h_->hdr, i));
}

BamReader::~BamReader() = default;

void BamReader::query(const BamRegion& region) {
  if (!h_->idx) {
    h_->idx = sam_index_load(h_->fp, path_.c_str());
    if (!h_->idx)
      throw Error("BAM region query without an index: run `samtools index " + path_ + "` first", path_);
  }
  const int tid = sam_hdr_name2tid(h_->hdr, region.contig.c_str());
  if (tid < 0) throw Error("contig '" + region.contig + "' is not in the file's header", path_);
  const hts_pos_t len = sam_hdr_tid2len(h_->hdr, tid);
  const hts_pos_t end = region.end0 < 0 ? len : region.end0;
  if (region.beg0 < 0 || region.beg0 > end)
    throw Error("bad region " + region.contig + ":" + std::to_string(region.beg0) + "-" + std::to_string(end), path_);
  if (h_->itr) hts_itr_destroy(h_->itr);
  h_->itr = sam_itr_queryi(h_->idx, tid, region.beg0, end);
  if (!h_->itr) throw Error("cannot query region " + region.contig + " in the index", path_);
}

namespace {

char complement(char c) {
  switch (c) {
    case 'A': return 'T'; case 'C': return 'G'; case 'G': return 'C'; case 'T': return 'A';
    case 'M': return 'K'; case 'K': return 'M'; case 'R': return 'Y'; case 'Y': return 'R';
    case 'B': return 'V'; case 'V': return 'B'; case 'D': return 'H'; case 'H': return 'D';
    default: return c;  // N, W, S, '='
  }
}

}  // namespace

bool BamReader::next(Read& read) {
  bam1_t* b = h_->b;
  for (;;) {
    const int r = h_->itr ? sam_itr_next(h_->fp, h_->itr, b) : sam_read1(h_->fp, h_->hdr, b);
    if (r == -1) return false;
    if (r < -1) {
      if (h_->cram && options_.reference.empty())
        throw Error("cannot decode CRAM: it needs its reference FASTA (give the reference)", path_);
      throw Error("truncated or corrupt alignment record", path_);
    }
    const uint16_t flag = b->core.flag;
    if (b->core.qual < options_.min_mapq) continue;
    if ((flag & options_.require_flags) != options_.require_flags) continue;
    if (flag & options_.exclude_flags) continue;
    if (options_.primary_only && (flag & (BAM_FSECONDARY | BAM_FSUPPLEMENTARY))) continue;
    break;
  }
  read.name = bam_get_qname(b);
  read.contig = b->core.tid < 0 ? "*" : sam_hdr_tid2name(h_->hdr, b->core.tid);
  read.pos = b->core.pos;
  read.flag = b->core.flag;
  read.mapq = b->core.qual;
  const int n = b->core.l_qseq;
  const uint8_t* s = bam_get_seq(b);
  read.seq.resize(n);
  for (int i = 0; i < n; ++i) read.seq[i] = seq_nt16_str[bam_seqi(s, i)];
  if (options_.orientation == ReadOrientation::read && (read.flag & BAM_FREVERSE)) {
    std::reverse(read.seq.begin(), read.seq.end());
    for (char& c : read.seq) c = complement(c);
  }
  return true;
}

}  // namespace mm::io
