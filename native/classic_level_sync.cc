// bslfs: synchronous writes and scans for classic-level's binding.
//
// scripts/build-native.js splices this file into node_modules/classic-level/binding.cc,
// just before NAPI_INIT, exports the two functions next to batch_do, and rebuilds the
// binding. It uses binding.cc's own helpers (NAPI_DB_CONTEXT, ThrowError, Database,
// ExplicitSnapshot). Why: each of classic-level's batch and iterator calls is a
// thread-pool job, about 50 us of waking threads on this VM against 7 us for the write
// itself; an unlink made one such job, an rmdir or a listing three. See
// native-notes/classic-level-sync.md.

// Whether the database is open; throws classic-level's own error when not (a closed
// database's handle is gone, so nothing may touch it).
static bool BslfsIsOpen(napi_env env, Database* database) {
  if (database->db_ != NULL) return true;
  napi_throw_error(env, "LEVEL_DATABASE_NOT_OPEN", "Database is not open");
  return false;
}

// batch_do_sync(context, keys, values, level0Limit) -> boolean
// One batch (no fsync) written on the calling thread: values[i] === null deletes keys[i];
// keys and values are Buffers. Writes nothing and returns false when level 0 holds
// level0Limit files or more: LevelDB then slows or stalls writes until a compaction is
// done, which must not happen on the event loop; the caller writes through batch_do.
NAPI_METHOD(batch_do_sync) {
  NAPI_ARGV(4);
  NAPI_DB_CONTEXT();
  if (!BslfsIsOpen(env, database)) return NULL;
  uint32_t level0Limit = 0;
  NAPI_STATUS_THROWS(napi_get_value_uint32(env, argv[3], &level0Limit));
  std::string level0;
  if (!database->db_->GetProperty("leveldb.num-files-at-level0", &level0) ||
      strtoul(level0.c_str(), NULL, 10) >= level0Limit) {
    napi_value no;
    napi_get_boolean(env, false, &no);
    return no;
  }

  uint32_t length = 0;
  NAPI_STATUS_THROWS(napi_get_array_length(env, argv[1], &length));
  leveldb::WriteBatch batch;
  for (uint32_t i = 0; i < length; i++) {
    napi_value key, value;
    NAPI_STATUS_THROWS(napi_get_element(env, argv[1], i, &key));
    NAPI_STATUS_THROWS(napi_get_element(env, argv[2], i, &value));
    char* keyData;
    size_t keyLength;
    NAPI_STATUS_THROWS(napi_get_buffer_info(env, key, (void**)&keyData, &keyLength));
    napi_valuetype type;
    NAPI_STATUS_THROWS(napi_typeof(env, value, &type));
    if (type == napi_null) {
      batch.Delete(leveldb::Slice(keyData, keyLength));
    } else {
      char* valueData;
      size_t valueLength;
      NAPI_STATUS_THROWS(napi_get_buffer_info(env, value, (void**)&valueData, &valueLength));
      batch.Put(leveldb::Slice(keyData, keyLength), leveldb::Slice(valueData, valueLength));
    }
  }

  leveldb::WriteOptions options;
  options.sync = false;
  leveldb::Status status = database->WriteBatch(options, &batch);
  if (!status.ok()) {
    ThrowError(env, status);
    return NULL;
  }
  napi_value yes;
  napi_get_boolean(env, true, &yes);
  return yes;
}

// scan_sync(context, from, inclusive, to, limit, snapshot) -> [key, value, key, value, ...]
// At most `limit` entries in key order from `from` (included when `inclusive`) up to
// `to` (excluded; null: no end), read on the calling thread; through `snapshot` (an
// explicit snapshot's context) when it is not undefined. Keys and values are copies.
NAPI_METHOD(scan_sync) {
  NAPI_ARGV(6);
  NAPI_DB_CONTEXT();
  if (!BslfsIsOpen(env, database)) return NULL;
  char* fromData;
  size_t fromLength;
  NAPI_STATUS_THROWS(napi_get_buffer_info(env, argv[1], (void**)&fromData, &fromLength));
  bool inclusive = false;
  NAPI_STATUS_THROWS(napi_get_value_bool(env, argv[2], &inclusive));
  napi_valuetype toType;
  NAPI_STATUS_THROWS(napi_typeof(env, argv[3], &toType));
  char* toData = NULL;
  size_t toLength = 0;
  if (toType != napi_null) NAPI_STATUS_THROWS(napi_get_buffer_info(env, argv[3], (void**)&toData, &toLength));
  uint32_t limit = 0;
  NAPI_STATUS_THROWS(napi_get_value_uint32(env, argv[4], &limit));
  ExplicitSnapshot* snapshot = NULL;
  napi_valuetype snapshotType;
  NAPI_STATUS_THROWS(napi_typeof(env, argv[5], &snapshotType));
  if (snapshotType != napi_undefined) NAPI_STATUS_THROWS(napi_get_value_external(env, argv[5], (void**)&snapshot));

  leveldb::ReadOptions options;
  options.snapshot = snapshot != NULL ? snapshot->nut : NULL;
  const leveldb::Slice from(fromData, fromLength);
  const leveldb::Slice to(toData, toLength);
  leveldb::Iterator* it = database->db_->NewIterator(options);
  it->Seek(from);
  if (!inclusive && it->Valid() && it->key() == from) it->Next();

  napi_value out;
  napi_create_array(env, &out);
  uint32_t count = 0;
  for (; it->Valid() && count < limit; it->Next(), count++) {
    const leveldb::Slice key = it->key();
    if (toData != NULL && key.compare(to) >= 0) break;
    const leveldb::Slice value = it->value();
    napi_value k, v;
    napi_create_buffer_copy(env, key.size(), key.data(), NULL, &k);
    napi_create_buffer_copy(env, value.size(), value.data(), NULL, &v);
    napi_set_element(env, out, 2 * count, k);
    napi_set_element(env, out, 2 * count + 1, v);
  }
  leveldb::Status status = it->status();
  delete it;
  if (!status.ok()) {
    ThrowError(env, status);
    return NULL;
  }
  return out;
}

