/* placeholder: replaced by the real interposer */
#include <unistd.h>
__attribute__((visibility("default"))) int boxer_preload_version(void) { return 1; }
